--- The one table of defaults, merged with the user's options in setup().
---
--- Keys:
---   cmd           argv of the language server (docs/protocol.md, "Start").
---   settings      sent as initializationOptions and as `settings.wizardcoder` on
---                 workspace/didChangeConfiguration; the server owns their meaning:
---     model         "default" (SmolLM2-135M-Instruct), a .gguf, a checkpoint dir, or a .bmodel
---     backend       "cpu" | "tpu"
---     fallbackToCpu tpu backend: serve from the CPU default when the device cannot be opened
---     maxNewTokens  tokens per completion at most
---     debounceMs    server-side wait after the last change before running the model
---     promptTokens  prompt budget (3/4 prefix, 1/4 suffix)
---     mode          "auto" | "fim" | "instruct" | "prefix"
---     languages     filetypes to complete in; empty means all. Also limits which buffers the
---                   client attaches to.
---     explainMaxNewTokens  tokens of a :WizardcoderExplain answer at most
---   root_markers  files that mark a workspace root (the server works without one).
---   keymaps       insert-mode keys; false or "" turns one off.
---     accept        accept the shown suggestion (falls back to the key itself when none shows)
---     next / prev   cycle through the suggestions
---   explain       the floating window of :WizardcoderExplain
---     border, max_width, max_height
---   statusline    text per server state for require('wizardcoder_tpu').statusline()
local M = {}

M.defaults = {
  cmd = { 'wizardcoder-tpu', 'serve', '--stdio' },
  settings = {
    model = 'default',
    backend = 'cpu',
    fallbackToCpu = true,
    maxNewTokens = 64,
    debounceMs = 150,
    promptTokens = 1024,
    mode = 'auto',
    languages = {},
    explainMaxNewTokens = 256,
  },
  root_markers = { '.git' },
  keymaps = {
    accept = '<Tab>',
    next = '<M-]>',
    prev = '<M-[>',
  },
  explain = {
    border = 'rounded',
    max_width = 80,
    max_height = 20,
  },
  statusline = {
    loading = 'WizardCoder …',
    idle = 'WizardCoder',
    busy = 'WizardCoder ●',
    error = 'WizardCoder ✗',
  },
}

--- The merged options of the last setup() call.
M.options = vim.deepcopy(M.defaults)

--- Merge {opts} over the defaults (lists such as `cmd` and `languages` are replaced, not merged).
---@param opts? table
---@return table
function M.merge(opts)
  vim.validate('opts', opts, 'table', true)
  local merged = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  -- tbl_deep_extend merges list-like tables index by index; a user's list replaces ours.
  if opts and opts.cmd then
    merged.cmd = vim.deepcopy(opts.cmd)
  end
  if opts and opts.settings and opts.settings.languages then
    merged.settings.languages = vim.deepcopy(opts.settings.languages)
  end
  if opts and opts.root_markers then
    merged.root_markers = vim.deepcopy(opts.root_markers)
  end
  vim.validate('cmd', merged.cmd, 'table')
  vim.validate('settings.backend', merged.settings.backend, function(v)
    return v == 'cpu' or v == 'tpu'
  end, '"cpu" or "tpu"')
  vim.validate('settings.languages', merged.settings.languages, 'table')
  M.options = merged
  return merged
end

return M
