"""partreid: part-based person re-identification (CGPN, RMGL, MGN, PCB, BoT).

The public API is small::

    from partreid.data import build_dataset
    from partreid.models import build_model, list_models
    from partreid.metrics import evaluate_rank, re_rank, re_rank_features
"""
__version__ = "0.1.0"
