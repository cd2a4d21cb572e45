--- Asking for a suggestion, taking part of one, and telling the server's local statistics what
--- became of each (docs/protocol.md, "Suggestions and acceptance statistics").
---
--- Neovim 0.12's vim.lsp.inline_completion asks automatically (on CursorMovedI) and accepts all
--- of a suggestion; it has no public way to ask on demand or to take a part. Both go through its
--- per-buffer completor (vim.lsp._capability), looked up with a guard: without it these keys do
--- nothing and say so. The trigger rules themselves (manual mode, after a deletion, mid-word, text
--- after the cursor) are the server's: it answers an automatic request it must not run the model
--- for with nothing, or with what its cache holds.
local M = {}

local INVOKED = 1 -- lsp.InlineCompletionTriggerKind.Invoked

--- The inline completion completor of {bufnr}, or nil.
---@param bufnr integer
local function completor(bufnr)
  local ok, capability = pcall(require, 'vim.lsp._capability')
  local class = ok and type(capability.all) == 'table' and capability.all.inline_completion or nil
  return class and class.active and class.active[bufnr] or nil
end

--- Neovim 0.12's completor re-shows its item on every CursorMovedI before asking again; after a
--- backspace at the end of a line the item's place lies past the line's end, nvim_buf_set_extmark
--- fails, the autocommand errors and no request is sent. Guard it: an item that no longer fits is
--- hidden, and the request goes out (the server then answers a deletion with nothing).
---@param bufnr integer
function M.guard(bufnr)
  local c = completor(bufnr)
  if not c or rawget(c, '_wizardcoder_guarded') then
    return
  end
  c._wizardcoder_guarded = true
  local show = c.show
  c.show = function(self, hint)
    if not pcall(show, self, hint) then
      self:hide()
      self.current = nil
    end
  end
end

--- The suggestion id the server put in the item's command (`wizardcoder.accepted`), or nil.
---@param item? table
---@return string?
local function suggestion_id(item)
  local command = item and item.command
  local argument = command and command.command == 'wizardcoder.accepted' and command.arguments and command.arguments[1]
  return type(argument) == 'table' and type(argument.id) == 'string' and argument.id or nil
end

--- Per buffer: the suggestion shown last, and whether the user took (part of) it.
---@type table<integer, { id: string, taken: boolean }>
local shown = {}

---@param client vim.lsp.Client
---@param method string
---@param params table
local function notify(client, method, params)
  if client and not client:is_stopped() then
    client:notify(method, params)
  end
end

--- The shown suggestion went away untaken: tell the server (once).
---@param client vim.lsp.Client
---@param bufnr integer
local function dismiss(client, bufnr)
  local last = shown[bufnr]
  if last and not last.taken then
    notify(client, 'wizardcoder/dismissed', { id = last.id })
  end
  shown[bufnr] = nil
end

--- After an answer to textDocument/inlineCompletion reached the completor: `wizardcoder/shown`
--- for a new suggestion, `wizardcoder/dismissed` for the one it replaced untaken.
---@param client vim.lsp.Client
---@param bufnr integer
local function answered(client, bufnr)
  local c = completor(bufnr)
  local id = c and c.current and c.current.client_id == client.id and suggestion_id(c.current) or nil
  local last = shown[bufnr]
  if last and last.id == id then
    return -- the rest of the same suggestion (typed into, or partly accepted)
  end
  dismiss(client, bufnr)
  if id then
    shown[bufnr] = { id = id, taken = false }
    notify(client, 'wizardcoder/shown', { id = id })
  end
end

--- Watch {client}'s inline completion answers (once per client).
---@param client vim.lsp.Client
function M.watch(client)
  if client._wizardcoder_watched then
    return
  end
  client._wizardcoder_watched = true
  local request = client.request
  client.request = function(self, method, params, handler, bufnr)
    if method == 'textDocument/inlineCompletion' and handler then
      local inner = handler
      local target = bufnr or vim.api.nvim_get_current_buf()
      handler = function(err, result, ctx, config)
        inner(err, result, ctx, config)
        if not err then
          answered(self, ctx.bufnr or target)
        end
      end
    end
    return request(self, method, params, handler, bufnr)
  end
end

--- Insert mode left, or the buffer detached: a shown suggestion was dismissed.
---@param client vim.lsp.Client
---@param bufnr integer
function M.left(client, bufnr)
  dismiss(client, bufnr)
end

--- Ask the server for a suggestion at the cursor (an invoked request: the trigger rules and
--- manual mode do not hold it back). False when inline completion is not active in {bufnr}.
---@param bufnr integer
---@return boolean
function M.request(bufnr)
  local c = completor(bufnr)
  if not c then
    vim.notify('wizardcoder-tpu: inline completion is not active in this buffer', vim.log.levels.WARN)
    return false
  end
  c:request(INVOKED)
  return true
end

--- Accept the whole suggestion (vim.lsp.inline_completion.get); the item's command tells the server.
---@param bufnr integer
---@return boolean
function M.accept(bufnr)
  local c = completor(bufnr)
  local id = c and suggestion_id(c.current)
  local accepted = vim.lsp.inline_completion.get({ bufnr = bufnr })
  if accepted and id and shown[bufnr] and shown[bufnr].id == id then
    shown[bufnr].taken = true
  end
  return accepted
end

--- The next word of {text}: leading white space (line breaks too), then a run of word characters
--- or a run of other non-blank characters.
---@param text string
---@return string
function M.next_word(text)
  local lead = text:match('^%s*')
  local rest = text:sub(#lead + 1)
  return lead .. (rest:match('^[%w_]+') or rest:match('^[^%w_%s]+') or '')
end

--- The next line of {text}: up to its first line break (a leading break and the line after it
--- when it starts with one).
---@param text string
---@return string
function M.next_line(text)
  return text:match('^\n*[^\n]*')
end

--- Accept the next word or line ({unit}: 'word' | 'line') of the shown suggestion; the rest stays
--- shown, and the server serves it from its cache on the next request. False when none shows.
---@param bufnr integer
---@param unit 'word'|'line'
---@return boolean
function M.accept_part(bufnr, unit)
  local c = completor(bufnr)
  local item = c and c.current
  if not item or type(item.insert_text) ~= 'string' then
    return false
  end
  local win = vim.fn.bufwinid(bufnr)
  local row, col = unpack(vim.api.nvim_win_get_cursor(win))
  row = row - 1
  local text = item.insert_text
  if item.range and item.range.start.row == row and item.range.start.col <= col then
    -- the item is anchored where it was asked for; what the user typed since is in the buffer already
    local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]
    local typed = line:sub(item.range.start.col + 1, col)
    if text:sub(1, #typed) ~= typed then
      return false
    end
    text = text:sub(#typed + 1)
  end
  local piece = unit == 'word' and M.next_word(text) or M.next_line(text)
  if piece == '' then
    return false
  end
  if #piece >= #text then
    return M.accept(bufnr)
  end
  local id = suggestion_id(item)
  vim.schedule(function()
    local lines = vim.split(piece, '\n', { plain = true })
    vim.api.nvim_buf_set_text(bufnr, row, col, row, col, lines)
    local new_row = row + #lines - 1
    local new_col = (#lines == 1 and col or 0) + #lines[#lines]
    vim.api.nvim_win_set_cursor(win, { new_row + 1, new_col })
    local range = nil
    if item.range and item.range.start.row == item.range.end_.row then
      local width = item.range.end_.col - math.max(item.range.start.col, col)
      range = vim.range(new_row, new_col, new_row, new_col + math.max(width, 0), { buf = bufnr })
    end
    -- Show the rest at once; the server's answer to the request that the cursor move sends
    -- (from its cache: no model run) then takes its place.
    c.current = vim.tbl_extend('force', item, { insert_text = text:sub(#piece + 1), range = range })
    c:show()
    local client = vim.lsp.get_client_by_id(item.client_id)
    if id and client then
      if shown[bufnr] and shown[bufnr].id == id then
        shown[bufnr].taken = true
      end
      notify(client, 'wizardcoder/partiallyAccepted', { id = id, chars = vim.fn.strchars(piece) })
    end
  end)
  return true
end

return M
