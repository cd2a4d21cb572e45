--- :checkhealth wizardcoder_tpu — the server executable, the model, the backend.
local M = {}

--- Where the server keeps the default model (inference/paths.py, inference/default_model.py).
---@return string
local function default_model_path()
  local root = vim.env.WIZARDCODER_TPU_CACHE
    or vim.fs.joinpath(vim.env.XDG_CACHE_HOME or vim.fs.joinpath(vim.uv.os_homedir(), '.cache'), 'wizardcoder-tpu')
  return vim.fs.joinpath(root, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf')
end

function M.check()
  local options = require('wizardcoder_tpu.config').options
  local plugin = require('wizardcoder_tpu')
  local settings = options.settings

  vim.health.start('wizardcoder-tpu: server')
  if vim.fn.has('nvim-0.12') == 0 or not vim.lsp.inline_completion then
    vim.health.error('Neovim 0.12 or newer is needed (vim.lsp.inline_completion)')
  else
    vim.health.ok('Neovim ' .. tostring(vim.version()) .. ' has vim.lsp.inline_completion')
  end
  local exe = options.cmd[1]
  local path = vim.fn.exepath(exe)
  if path == '' then
    vim.health.error(('`%s` is not on $PATH'):format(exe),
      { 'pip install wizardcoder-tpu (or activate its virtual environment)', 'or set `cmd` in setup()' })
  else
    vim.health.ok(('`%s` found: %s'):format(exe, path))
  end
  local client = plugin.client()
  local state = plugin.status()
  if client then
    vim.health.ok(('running (client id %d), state: %s %s'):format(client.id, state and state.state or 'unknown',
      state and state.message or ''))
    if state and state.state == 'error' then
      vim.health.error('the server reports: ' .. state.message)
    end
  else
    vim.health.info('not running yet: it starts when a matching buffer opens')
  end

  vim.health.start('wizardcoder-tpu: model')
  local model = settings.model
  if model == 'default' then
    local file = default_model_path()
    if vim.uv.fs_stat(file) then
      vim.health.ok('default model (SmolLM2-135M-Instruct) present: ' .. file)
    else
      vim.health.warn('default model not downloaded yet (' .. file .. ')',
        { 'the server fetches it on first start (93 MB), or run `wizardcoder-tpu fetch`' })
    end
  elseif vim.uv.fs_stat(vim.fs.normalize(model)) then
    vim.health.ok('model present: ' .. model)
  else
    vim.health.error('model not found: ' .. model, { 'set settings.model to a .gguf, a checkpoint directory or a .bmodel' })
  end

  vim.health.start('wizardcoder-tpu: backend')
  vim.health.info(('configured backend: %s%s'):format(settings.backend,
    settings.backend == 'tpu' and (settings.fallbackToCpu and ' (falls back to the CPU)' or ' (no CPU fallback)') or ''))
  if state and state.message ~= '' then
    vim.health.info('server says: ' .. state.message)
  end
end

return M
