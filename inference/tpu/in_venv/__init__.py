"""Scripts that run inside tpu-mlir's own Python 3.10 venv, never in the project's.

They import only the standard library, numpy and tpu-mlir; the project talks to them over pipes
(``wire.py`` is the one format both sides read).
"""
