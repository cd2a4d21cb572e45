--- The server's `wizardcoder/status` notification ({state, message}) and a statusline component.
local M = {}

---@alias wizardcoder_tpu.State 'loading'|'idle'|'busy'|'error'

--- The latest state, or nil before the server sent one.
---@type { state: wizardcoder_tpu.State, message: string }?
M.current = nil

--- Handler for the `wizardcoder/status` notification (an lsp.Handler).
---@param params { state: wizardcoder_tpu.State, message: string }
function M.handler(_, params, _)
  if type(params) ~= 'table' or type(params.state) ~= 'string' then
    return
  end
  local previous = M.current
  M.current = { state = params.state, message = params.message or '',
    last_latency_ms = type(params.lastLatencyMs) == 'number' and params.lastLatencyMs or nil }
  if params.state == 'error' and not (previous and previous.state == 'error' and previous.message == params.message) then
    vim.notify('wizardcoder-tpu: ' .. M.current.message, vim.log.levels.WARN)
  end
  vim.api.nvim_exec_autocmds('User', { pattern = 'WizardcoderStatus', modeline = false, data = M.current })
  vim.cmd.redrawstatus({ bang = true })
end

--- Forget the state (the server exited).
function M.reset()
  M.current = nil
  vim.api.nvim_exec_autocmds('User', { pattern = 'WizardcoderStatus', modeline = false })
  vim.cmd.redrawstatus({ bang = true })
end

--- Statusline text for the current state ('' while no server runs), e.g.
--- `set statusline=%f\ %{v:lua.require'wizardcoder_tpu'.statusline()}`; while idle, with the
--- last suggestion's latency when {latency} is true and the server has served one.
---@param labels table<string, string>
---@param latency? boolean
---@return string
function M.statusline(labels, latency)
  if not M.current then
    return ''
  end
  local text = labels[M.current.state] or ('WizardCoder ' .. M.current.state)
  if latency and M.current.state == 'idle' and M.current.last_latency_ms then
    text = ('%s %d ms'):format(text, M.current.last_latency_ms)
  end
  return text
end

return M
