"""wizardcoder-tpu: inline code completion from WizardCoder on a BM1684X TPU or the CPU.

The repository keeps ``lsp/`` and ``inference/`` at its top; the wheel maps them to
``wizardcoder_tpu.lsp`` and ``wizardcoder_tpu.inference``.
"""

__version__ = "0.1.0"
