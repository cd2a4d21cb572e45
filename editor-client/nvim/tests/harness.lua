--- Loaded into the Neovim under test by tests/test_nvim.py (`:luafile`). It reads the editor's
--- state for the test (over `nvim --server … --remote-expr`) and changes nothing: the test
--- drives Neovim with real keys (`--remote-send`).
local M = {}

local inline_ns = vim.api.nvim_create_namespace('nvim.lsp.inline_completion')

M.bufnr = vim.api.nvim_get_current_buf()
--- `$/progress` reports on an explain token, counted as the stream arrives.
M.reports = 0
M.report_texts = {}

--- What the explanation float showed after each report (read once the plugin has updated it).
M.float_texts = {}
--- Each `wizardcoder/status` as the user saw it: the state and the rendered 'statusline'.
M.statuses = {}

local floats

vim.api.nvim_create_autocmd('LspProgress', {
  pattern = 'report',
  callback = function(ev)
    local token = ev.data.params.token
    if type(token) == 'string' and token:match('^wizardcoder%-explain') then
      M.reports = M.reports + 1
      table.insert(M.report_texts, ev.data.params.value.message)
      vim.schedule(function()
        for _, f in ipairs(floats()) do
          if f.filetype == 'markdown' then
            table.insert(M.float_texts, table.concat(f.lines, '\n'))
          end
        end
      end)
    end
  end,
})

vim.api.nvim_create_autocmd('User', {
  pattern = 'WizardcoderStatus',
  callback = function(ev)
    local rendered = vim.api.nvim_eval_statusline(vim.o.statusline, { winid = vim.fn.bufwinid(M.bufnr) }).str
    table.insert(M.statuses, { state = ev.data and ev.data.state or vim.NIL, statusline = rendered,
      message = ev.data and ev.data.message or vim.NIL })
  end,
})

---@param chunks [string, any][]
local function chunk_text(chunks)
  return table.concat(vim.tbl_map(function(c)
    return c[1]
  end, chunks or {}))
end

--- The ghost text shown in the buffer (vim.lsp.inline_completion's extmark), or nil.
local function ghost()
  local marks = vim.api.nvim_buf_get_extmarks(M.bufnr, inline_ns, 0, -1, { details = true })
  if #marks == 0 then
    return nil
  end
  local details = marks[1][4]
  local lines = {}
  for _, line in ipairs(details.virt_lines or {}) do
    table.insert(lines, chunk_text(line))
  end
  return { row = marks[1][2], col = marks[1][3], first = chunk_text(details.virt_text), rest = lines }
end

function floats()
  local found = {}
  for _, win in ipairs(vim.api.nvim_list_wins()) do
    local config = vim.api.nvim_win_get_config(win)
    if config.relative ~= '' then
      local buf = vim.api.nvim_win_get_buf(win)
      table.insert(found, {
        win = win,
        filetype = vim.bo[buf].filetype,
        lines = vim.api.nvim_buf_get_lines(buf, 0, -1, false),
        height = vim.api.nvim_win_get_height(win),
      })
    end
  end
  return found
end

--- The server's `wizardcoder/stats` (its last generations and why each stopped), as last fetched.
M.stats = vim.NIL

--- Ask the server for `wizardcoder/stats`; the answer lands in M.stats (read by a later state()).
function M.refresh_stats()
  local client = require('wizardcoder_tpu').client()
  if client then
    client:request('wizardcoder/stats', {}, function(err, result)
      M.stats = err and { error = err.message } or result
    end)
  end
  return true
end

--- Send the server new settings (workspace/didChangeConfiguration), as a user's setup() call does.
---@param encoded string JSON of the `wizardcoder` settings to change
function M.set_settings(encoded)
  local client = require('wizardcoder_tpu').client()
  local settings = vim.tbl_extend('force', require('wizardcoder_tpu.config').options.settings, vim.json.decode(encoded))
  client:notify('workspace/didChangeConfiguration', { settings = { wizardcoder = settings } })
  return true
end

--- Everything the test asserts on, as JSON.
function M.state()
  local plugin = require('wizardcoder_tpu')
  local client = plugin.client()
  local pending_explain = 0
  if client then
    for _, request in pairs(client.requests) do
      if request.type == 'pending' and request.method == 'workspace/executeCommand' then
        pending_explain = pending_explain + 1
      end
    end
  end
  local tab = vim.fn.maparg('<Tab>', 'i', false, true)
  local keys = {}
  for _, lhs in ipairs({ '<M-Right>', '<M-C-Right>', '<M-\\>' }) do
    keys[lhs] = vim.fn.maparg(lhs, 'i', false, true).desc or vim.NIL
  end
  return vim.json.encode({
    mode = vim.api.nvim_get_mode().mode,
    lines = vim.api.nvim_buf_get_lines(M.bufnr, 0, -1, false),
    cursor = vim.api.nvim_win_get_cursor(0),
    filetype = vim.bo[M.bufnr].filetype,
    ghost = ghost() or vim.NIL,
    floats = floats(),
    status = plugin.status() or vim.NIL,
    statusline = plugin.statusline(),
    attached = client ~= nil and client.attached_buffers[M.bufnr] == true,
    inline_enabled = vim.lsp.inline_completion.is_enabled({ bufnr = M.bufnr }),
    tab_mapping = tab.desc or vim.NIL,
    key_mappings = keys,
    pending_explain = pending_explain,
    reports = M.reports,
    report_texts = M.report_texts,
    float_texts = M.float_texts,
    statuses = M.statuses,
    stats = M.stats,
  })
end

--- The current window as HTML (ghost text included: :TOhtml renders virtual text).
---@param path string
function M.capture(path)
  local html = require('tohtml').tohtml(0, { title = 'wizardcoder-tpu ghost text in Neovim', number_lines = true })
  vim.fn.writefile(html, path)
  return path
end

--- `:checkhealth wizardcoder_tpu` as text.
function M.health()
  vim.cmd('checkhealth wizardcoder_tpu')
  local text = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\n')
  vim.cmd('bwipeout!')
  return text
end

_G.WizardcoderTest = M
return M
