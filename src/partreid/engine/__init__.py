"""Training and evaluation engine."""
from .checkpoint import load_checkpoint, save_checkpoint
from .evaluator import evaluate, extract_features
from .optim import build_optimizer, build_scheduler
from .trainer import train

__all__ = ["train", "evaluate", "extract_features", "build_optimizer", "build_scheduler",
           "save_checkpoint", "load_checkpoint"]
