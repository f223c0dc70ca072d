"""Click commands, one module each; each is a thin layer over the Python API."""
