"""The language server: LSP in, completion requests to ``inference``, items back."""
