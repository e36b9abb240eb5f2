"""Files: atomic writes, weights without pickle, the pruned-folder format, ONNX export.

Import the modules themselves (``chipprune.io.pruned`` ...): this package re-exports nothing, so
that the models can read weights without importing the folder format that builds models.
"""
