"""The console script, ``wizardcoder-tpu``: argument parsing only (``main.py``).

Each subcommand's work lives in the package that does it (``lsp``, ``inference``); this package
is installed as ``wizardcoder_tpu.cli``.
"""
