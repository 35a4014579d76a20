"""Torch -> ONNX export (needs torch) and, in ``export.runtime``, the torch-free edge runtime."""
