"""Using a trained model: load it (``load_model``, ``load_trained``), run it on images
(``Extractor``, flip-averaged like evaluation), run an exported ONNX file (``OnnxModel``), or
embed a tracker's boxes frame by frame (``AppearanceEmbedder``).

model = partreid.load_model("runs/cgpn/last.pth")      # eval mode, no config file needed
tf = model.info.transform()                            # PIL image -> normalised tensor
feats = Extractor(model)(["a.jpg", pil_image])         # (N, D) float32, flip-averaged
"""

from .embedder import AppearanceEmbedder
from .extractor import Extractor
from .flip import FlipAveraged, flip_averaged
from .model import ModelInfo, TrainedModel, load_model, load_trained, model_from_checkpoint
from .onnx import OnnxModel

__all__ = [
    "AppearanceEmbedder",
    "Extractor",
    "FlipAveraged",
    "ModelInfo",
    "OnnxModel",
    "TrainedModel",
    "flip_averaged",
    "load_model",
    "load_trained",
    "model_from_checkpoint",
]
