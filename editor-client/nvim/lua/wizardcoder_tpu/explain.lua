--- :WizardcoderExplain — send `wizardcoder.explainSelection` and stream the markdown into a float.
---
--- The server reports the whole explanation so far on the request's workDoneToken (not a delta),
--- so each report replaces the window's text. The window closes like a hover: when the cursor
--- moves in the explained buffer, on entering insert mode, or on entering another buffer
--- (`<C-w>w` enters the window itself, `q` closes it there). Closing it cancels the request.
local M = {}

local counter = 0
--- The float of the last explanation (one at a time).
---@type integer?
local current_win

--- Byte column {col} (0-based) of line {row} (0-based) in the client's position encoding.
---@param bufnr integer
---@param row integer
---@param col integer
---@param encoding string
---@return integer
local function to_lsp_col(bufnr, row, col, encoding)
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]
  col = math.min(col, #line)
  if encoding == 'utf-8' then
    return col
  end
  return vim.str_utfindex(line, encoding, col, false)
end

--- The LSP range of the last visual selection ({visual} = true) or of lines {line1}..{line2}.
---@param bufnr integer
---@param encoding string
---@param line1 integer 1-based
---@param line2 integer 1-based, inclusive
---@param visual boolean
---@return lsp.Range
function M.selection_range(bufnr, encoding, line1, line2, visual)
  local mode = vim.fn.visualmode()
  if visual and (mode == 'v' or mode == '\22') then
    local s = vim.api.nvim_buf_get_mark(bufnr, '<') -- {row 1-based, col 0-based byte}
    local e = vim.api.nvim_buf_get_mark(bufnr, '>')
    local last = vim.api.nvim_buf_get_lines(bufnr, e[1] - 1, e[1], true)[1]
    -- '> marks the first byte of the last selected character; the LSP end is exclusive.
    local char_len = #vim.fn.strcharpart(last:sub(e[2] + 1), 0, 1)
    local end_col = vim.o.selection == 'exclusive' and e[2] or e[2] + math.max(char_len, 1)
    return {
      start = { line = s[1] - 1, character = to_lsp_col(bufnr, s[1] - 1, s[2], encoding) },
      ['end'] = { line = e[1] - 1, character = to_lsp_col(bufnr, e[1] - 1, end_col, encoding) },
    }
  end
  local last = vim.api.nvim_buf_get_lines(bufnr, line2 - 1, line2, true)[1]
  return {
    start = { line = line1 - 1, character = 0 },
    ['end'] = { line = line2 - 1, character = to_lsp_col(bufnr, line2 - 1, #last, encoding) },
  }
end

--- A scratch markdown buffer in a float beside the cursor.
---@param opts table the `explain` options
---@return integer win, integer buf
local function open_float(opts)
  local buf = vim.api.nvim_create_buf(false, true)
  vim.bo[buf].bufhidden = 'wipe'
  vim.bo[buf].filetype = 'markdown'
  local width = math.min(opts.max_width, math.max(20, vim.o.columns - 4))
  local win = vim.api.nvim_open_win(buf, false, {
    relative = 'cursor',
    row = 1,
    col = 0,
    width = width,
    height = 1,
    style = 'minimal',
    border = opts.border,
    title = ' WizardCoder: explain ',
    title_pos = 'left',
  })
  vim.wo[win].wrap = true
  vim.wo[win].linebreak = true
  vim.wo[win].conceallevel = 2
  pcall(vim.treesitter.start, buf, 'markdown')
  vim.keymap.set('n', 'q', '<Cmd>close<CR>', { buffer = buf, nowait = true, desc = 'Close the explanation' })
  return win, buf
end

---@param win integer
---@param buf integer
---@param text string
---@param max_height integer
local function set_text(win, buf, text, max_height)
  if not vim.api.nvim_win_is_valid(win) then
    return
  end
  local lines = vim.split(text, '\n', { plain = true })
  vim.bo[buf].modifiable = true
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].modifiable = false
  -- Height of the wrapped text, within the limit.
  local height = vim.api.nvim_win_text_height(win, {}).all
  vim.api.nvim_win_set_height(win, math.max(1, math.min(height, max_height)))
end

--- Explain a range of {bufnr} with {client}; returns the floating window.
---@param client vim.lsp.Client
---@param bufnr integer
---@param range lsp.Range
---@param opts table the `explain` options
---@return integer win
function M.run(client, bufnr, range, opts)
  if current_win and vim.api.nvim_win_is_valid(current_win) then
    vim.api.nvim_win_close(current_win, true)
  end
  counter = counter + 1
  local token = ('wizardcoder-explain-%d-%d'):format(vim.uv.os_getpid(), counter)
  local win, buf = open_float(opts)
  current_win = win
  set_text(win, buf, '_Explaining…_', opts.max_height)

  local done = false
  local progress = vim.api.nvim_create_autocmd('LspProgress', {
    pattern = 'report',
    desc = 'wizardcoder-tpu: stream the explanation',
    callback = function(ev)
      local params = ev.data.params
      if ev.data.client_id == client.id and params.token == token and type(params.value.message) == 'string' then
        set_text(win, buf, params.value.message, opts.max_height)
      end
    end,
  })

  local ok, request_id = client:request('workspace/executeCommand', {
    command = 'wizardcoder.explainSelection',
    arguments = { vim.uri_from_bufnr(bufnr), range },
    workDoneToken = token,
  }, function(err, result)
    done = true
    pcall(vim.api.nvim_del_autocmd, progress)
    if err then
      set_text(win, buf, '**wizardcoder-tpu:** ' .. (err.message or vim.inspect(err)), opts.max_height)
    elseif type(result) == 'table' and type(result.markdown) == 'string' then
      set_text(win, buf, result.markdown, opts.max_height)
    end
  end, bufnr)

  if not ok then
    done = true
    pcall(vim.api.nvim_del_autocmd, progress)
    set_text(win, buf, '**wizardcoder-tpu:** the server is not running', opts.max_height)
    return win
  end

  local group = vim.api.nvim_create_augroup('wizardcoder_tpu.explain', { clear = true })
  local function close()
    if vim.api.nvim_win_is_valid(win) then
      pcall(vim.api.nvim_win_close, win, true)
    end
  end
  vim.api.nvim_create_autocmd('WinClosed', {
    group = group,
    pattern = tostring(win),
    once = true,
    callback = function()
      pcall(vim.api.nvim_del_augroup_by_id, group)
      if not done then
        done = true
        pcall(vim.api.nvim_del_autocmd, progress)
        client:cancel_request(request_id)
      end
    end,
  })
  -- Armed after this command returns, so that its own cursor placement does not count.
  vim.schedule(function()
    if not vim.api.nvim_win_is_valid(win) then
      return
    end
    -- nested: the window's WinClosed (which cancels the request) must fire from these too.
    vim.api.nvim_create_autocmd({ 'CursorMoved', 'InsertEnter' },
      { group = group, buffer = bufnr, nested = true, callback = close })
    vim.api.nvim_create_autocmd('BufEnter', {
      group = group,
      nested = true,
      callback = function(ev)
        if ev.buf ~= bufnr and ev.buf ~= buf then
          close()
        end
      end,
    })
  end)
  return win
end

return M
