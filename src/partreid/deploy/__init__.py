"""A trained model outside PyTorch: ``export`` (inference-only weights, ONNX with a parity check)
and ``runtime`` (ONNX Runtime or PyTorch for a checkpoint's forward pass).

Nothing heavy is imported here; optional dependencies (onnx, onnxruntime) load inside the
functions that need them.
"""
