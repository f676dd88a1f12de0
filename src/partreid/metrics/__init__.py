"""Evaluation metrics (CMC / mAP / mINP), distances, k-reciprocal re-ranking, query expansion
and bootstrap confidence intervals over queries.

This package knows nothing about models or data sets: every function takes numpy arrays or
torch tensors.
"""

from __future__ import annotations

from .bootstrap import paired_bootstrap_ratio, percentile_interval
from .distance import compute_distance
from .query_expansion import alpha_query_expansion, average_query_expansion
from .rank import evaluate_rank, rank_summary
from .rerank import re_rank, re_rank_features

__all__ = [
    "compute_distance",
    "evaluate_rank",
    "rank_summary",
    "re_rank",
    "re_rank_features",
    "average_query_expansion",
    "alpha_query_expansion",
    "paired_bootstrap_ratio",
    "percentile_interval",
]
