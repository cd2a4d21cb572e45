--- wizardcoder-tpu for Neovim 0.12: inline completions and "explain selection" from the
--- wizardcoder-tpu language server. All behaviour lives in the server (docs/protocol.md);
--- this file only wires Neovim's own LSP client, inline completion and keymaps.
---
---   require('wizardcoder_tpu').setup({ settings = { maxNewTokens = 48 } })
local config = require('wizardcoder_tpu.config')
local status = require('wizardcoder_tpu.status')
local suggest = require('wizardcoder_tpu.suggest')

local M = {}

M.name = 'wizardcoder_tpu'

local augroup = vim.api.nvim_create_augroup('wizardcoder_tpu', { clear = true })

--- The running client attached to {bufnr} (or any running client of ours).
---@param bufnr? integer
---@return vim.lsp.Client?
function M.client(bufnr)
  return vim.lsp.get_clients({ name = M.name, bufnr = bufnr })[1]
end

---@param lhs string|false|nil
---@param rhs string|function
---@param desc string
---@param bufnr integer
---@param expr? boolean
local function map(lhs, rhs, desc, bufnr, expr)
  if lhs and lhs ~= '' then
    vim.keymap.set('i', lhs, rhs, { buffer = bufnr, expr = expr, desc = desc })
  end
end

---@param bufnr integer
---@param client vim.lsp.Client
local function on_attach(bufnr, client)
  local keys = config.options.keymaps
  vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
  suggest.watch(client)
  suggest.guard(bufnr)
  vim.schedule(function() -- the completor may be made once the attach has finished
    suggest.guard(bufnr)
  end)
  vim.api.nvim_create_autocmd('InsertLeave', {
    group = augroup,
    buffer = bufnr,
    desc = 'wizardcoder-tpu: a shown suggestion left untaken is dismissed',
    callback = function()
      suggest.left(client, bufnr)
    end,
  })
  map(keys.accept, function()
    if not suggest.accept(bufnr) then
      return keys.accept
    end
  end, 'WizardCoder: accept the suggestion', bufnr, true)
  map(keys.accept_word, function()
    if not suggest.accept_part(bufnr, 'word') then
      return keys.accept_word
    end
  end, 'WizardCoder: accept the next word of the suggestion', bufnr, true)
  map(keys.accept_line, function()
    if not suggest.accept_part(bufnr, 'line') then
      return keys.accept_line
    end
  end, 'WizardCoder: accept the next line of the suggestion', bufnr, true)
  map(keys.suggest, function()
    suggest.request(bufnr)
  end, 'WizardCoder: ask for a suggestion', bufnr)
  map(keys.next, function()
    vim.lsp.inline_completion.select({ bufnr = bufnr, count = 1 })
  end, 'WizardCoder: next suggestion', bufnr)
  map(keys.prev, function()
    vim.lsp.inline_completion.select({ bufnr = bufnr, count = -1 })
  end, 'WizardCoder: previous suggestion', bufnr)
end

--- Start the server for matching buffers, enable inline completion and the keymaps, and define
--- :WizardcoderExplain. Calling it again replaces the options.
---@param opts? table see lua/wizardcoder_tpu/config.lua for every key and its default
function M.setup(opts)
  local options = config.merge(opts)

  vim.lsp.config(M.name, {
    cmd = options.cmd, -- every filetype: the server decides which buffers get suggestions
    root_markers = options.root_markers,
    init_options = options.settings,
    settings = { wizardcoder = options.settings },
    handlers = { ['wizardcoder/status'] = status.handler },
    on_exit = vim.schedule_wrap(status.reset),
  })
  vim.lsp.enable(M.name)

  vim.api.nvim_clear_autocmds({ group = augroup })
  vim.api.nvim_create_autocmd('LspAttach', {
    group = augroup,
    desc = 'wizardcoder-tpu: inline completion and keymaps',
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      if client and client.name == M.name then
        on_attach(ev.buf, client)
      end
    end,
  })
  -- Buffers that were attached before this setup() call.
  local client = M.client()
  if client then
    client:notify('workspace/didChangeConfiguration', { settings = { wizardcoder = options.settings } })
    for bufnr in pairs(client.attached_buffers) do
      on_attach(bufnr, client)
    end
  end

  vim.api.nvim_create_user_command('WizardcoderSuggest', function()
    M.suggest()
  end, { force = true, desc = 'WizardCoder: ask for a suggestion at the cursor (also with trigger = "manual")' })

  vim.api.nvim_create_user_command('WizardcoderExplain', function(cmd)
    M.explain(cmd.line1, cmd.line2, cmd.range > 0)
  end, { range = true, force = true, desc = 'WizardCoder: explain the selection (or the current line)' })
end

--- Ask for a suggestion at the cursor of the current buffer (an invoked request: it runs with
--- `trigger = 'manual'` too, and whatever the automatic rules say). False when none can be asked.
---@return boolean
function M.suggest()
  return suggest.request(vim.api.nvim_get_current_buf())
end

--- Accept the next word of the shown suggestion; false when none shows.
---@return boolean
function M.accept_word()
  return suggest.accept_part(vim.api.nvim_get_current_buf(), 'word')
end

--- Accept the next line of the shown suggestion; false when none shows.
---@return boolean
function M.accept_line()
  return suggest.accept_part(vim.api.nvim_get_current_buf(), 'line')
end

--- Explain lines {line1}..{line2} of the current buffer, or the last visual selection when
--- {visual} is true and it covers those lines. Returns the floating window, or nil.
---@param line1 integer
---@param line2 integer
---@param visual boolean
---@return integer?
function M.explain(line1, line2, visual)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = M.client(bufnr)
  if not client then
    vim.notify('wizardcoder-tpu: no server attached to this buffer', vim.log.levels.WARN)
    return nil
  end
  local marks_match = vim.api.nvim_buf_get_mark(bufnr, '<')[1] == line1
    and vim.api.nvim_buf_get_mark(bufnr, '>')[1] == line2
  local range = require('wizardcoder_tpu.explain').selection_range(
    bufnr, client.offset_encoding, line1, line2, visual and marks_match)
  return require('wizardcoder_tpu.explain').run(client, bufnr, range, config.options.explain)
end

--- Statusline component: '' while no server runs, else a label per state (config `statusline`).
---@return string
function M.statusline()
  return status.statusline(config.options.statusline, config.options.statusline_latency)
end

--- The server's last `wizardcoder/status`: { state = 'loading'|'idle'|'busy'|'error', message }.
---@return { state: string, message: string }?
function M.status()
  return status.current
end

return M
