"""Training and evaluation engine."""

from .eval_run import evaluate_checkpoint, write_run_report
from .evaluator import evaluate, extract_features
from .optim import build_optimizer, build_scheduler
from .setup import EvalTarget
from .trainer import train

__all__ = [
    "train",
    "EvalTarget",
    "evaluate",
    "evaluate_checkpoint",
    "extract_features",
    "build_optimizer",
    "build_scheduler",
    "write_run_report",
]
