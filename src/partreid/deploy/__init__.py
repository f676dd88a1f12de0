"""A trained model outside PyTorch: ``export`` (inference-only weights, ONNX with a parity
check), ``openvino`` (the ONNX graph as an OpenVINO IR), ``quantize`` (INT8 post-training
quantisation and its held-out mAP change), ``trackers`` (BoxMOT's sidecar and agreement check)
and ``runtime`` (ONNX Runtime or PyTorch for a checkpoint's forward pass).

Nothing heavy is imported here; optional dependencies (onnx, onnxruntime, openvino, nncf,
boxmot) load inside the functions that need them.
"""
