"""Using a trained model outside training: extract features (``sources``, ``extract``),
export it (``export``: inference-only weights, ONNX) and search a gallery (``index``).

Nothing heavy is imported here; optional dependencies (onnx, onnxruntime, faiss, av) load inside
the functions that need them.
"""
