"""partreid: part-based person re-identification (CGPN, RMGL, MGN, PCB, BoT).

The public API is small::

    from partreid.data import build_dataset
    from partreid.models import build_model, list_models
    from partreid.metrics import evaluate_rank, re_rank, re_rank_features
    from partreid import load_model           # a trained model from its checkpoint, eval mode
"""

from ._version import __version__

__all__ = ["__version__", "load_model"]


def load_model(path, device="cpu", overrides=None):
    """Load a trained partreid checkpoint (no config needed); see :func:`partreid.inference.load_model`."""
    from .inference import load_model as _load

    return _load(path, device, overrides)
