--- :checkhealth wizardcoder_tpu — the server executable, the model, the backend.
local M = {}

--- The named models' files in the server's cache (inference/models.py: name → file_name).
local MODEL_FILES = {
  ['qwen2.5-coder-0.5b'] = { 'Qwen2.5-Coder-0.5B-Instruct', 'qwen2.5-coder-0.5b-instruct.gguf', '455 MiB' },
  ['qwen2.5-coder-1.5b'] = { 'Qwen2.5-Coder-1.5B-Instruct', 'qwen2.5-coder-1.5b-instruct.gguf', '1 GiB' },
  ['smollm2-135m'] = { 'SmolLM2-135M-Instruct', 'SmolLM2-135M-Instruct.Q4_1.gguf', '89 MiB' },
}
MODEL_FILES['default'] = MODEL_FILES['qwen2.5-coder-0.5b']

--- Where the server keeps a named model (inference/paths.py, inference/models.py).
---@param file string
---@return string
local function cached_model_path(file)
  local root = vim.env.WIZARDCODER_TPU_CACHE
    or vim.fs.joinpath(vim.env.XDG_CACHE_HOME or vim.fs.joinpath(vim.uv.os_homedir(), '.cache'), 'wizardcoder-tpu')
  return vim.fs.joinpath(root, 'models', file)
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
  local exe = type(options.cmd) == 'table' and options.cmd[1] or nil
  local path = exe and vim.fn.exepath(exe) or ''
  if not exe then
    vim.health.ok('`cmd` connects to a running server (vim.lsp.rpc.connect)')
  elseif path == '' then
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
  local named = MODEL_FILES[model]
  if named then
    local title, file, size = named[1], cached_model_path(named[2]), named[3]
    local which = model == 'default' and 'default model' or ('model ' .. model)
    if vim.uv.fs_stat(file) then
      vim.health.ok(('%s (%s) present: %s'):format(which, title, file))
    else
      vim.health.warn(('%s (%s) not downloaded yet (%s)'):format(which, title, file),
        { ('the server fetches it on first start (%s), or run `wizardcoder-tpu fetch %s`'):format(size,
          model == 'default' and '' or model) })
    end
  elseif vim.uv.fs_stat(vim.fs.normalize(model)) then
    vim.health.ok('model present: ' .. model)
  else
    vim.health.error('model not found: ' .. model, { 'set settings.model to a model name, a .gguf, a checkpoint directory or a .bmodel' })
  end

  vim.health.start('wizardcoder-tpu: backend')
  vim.health.info(('configured backend: %s%s'):format(settings.backend,
    settings.backend == 'tpu' and (settings.fallbackToCpu and ' (falls back to the CPU)' or ' (no CPU fallback)') or ''))
  if state and state.message ~= '' then
    vim.health.info('server says: ' .. state.message)
  end
end

return M
