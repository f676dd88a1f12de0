"""Using a trained model: load it (``load_model``, ``load_trained``), run it on images
(``Extractor``, flip-averaged like evaluation), run an exported model on a CPU runtime
(``open_exported``: ``OnnxModel`` for ``.onnx``, ``OpenVinoModel`` for OpenVINO ``.xml``), or
embed a tracker's boxes frame by frame (``AppearanceEmbedder``).

model = partreid.load_model("runs/cgpn/last.pth")      # eval mode, no config file needed
tf = model.info.transform()                            # PIL image -> normalised tensor
feats = Extractor(model)(["a.jpg", pil_image])         # (N, D) float32, flip-averaged
"""

from .embedder import AppearanceEmbedder
from .exported import ExportedModel
from .extractor import Extractor
from .flip import FlipAveraged, flip_averaged
from .model import ModelInfo, TrainedModel, load_model, load_trained, model_from_checkpoint
from .onnx import OnnxModel
from .openvino import OpenVinoModel
from .runtimes import is_exported, open_exported

__all__ = [
    "AppearanceEmbedder",
    "ExportedModel",
    "Extractor",
    "FlipAveraged",
    "ModelInfo",
    "OnnxModel",
    "OpenVinoModel",
    "TrainedModel",
    "flip_averaged",
    "is_exported",
    "load_model",
    "load_trained",
    "model_from_checkpoint",
    "open_exported",
]
