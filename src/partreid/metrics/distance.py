"""Distance matrices between feature sets, plus small tensor helpers shared by the metrics.

Everything here works on numpy arrays and torch tensors alike: a numpy input is wrapped
without a copy (``torch.from_numpy``), the work is done with torch on the input's device,
and a numpy input gets a numpy result back.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Tuple, Union

import numpy as np
import torch

from ..errors import InvalidValueError

ArrayLike = Union[np.ndarray, torch.Tensor]

METRICS = ("euclidean", "cosine")

__all__ = ["compute_distance", "METRICS"]


# --------------------------------------------------------------------------- helpers
def as_tensor(
    x: Any, name: str, device: torch.device | str | None = None
) -> Tuple[torch.Tensor, bool]:
    """Return ``(tensor, was_numpy)``; numpy arrays are wrapped without a copy."""
    if isinstance(x, torch.Tensor):
        t, was_numpy = x.detach(), False
    elif isinstance(x, np.ndarray):
        t, was_numpy = torch.from_numpy(np.ascontiguousarray(x)), True
    else:
        try:
            t, was_numpy = torch.as_tensor(np.asarray(x)), True
        except Exception as exc:  # pragma: no cover - message path
            raise TypeError(
                f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}"
            ) from exc
    if device is not None:
        t = t.to(device)
    return t, was_numpy


def float_features(x: torch.Tensor, name: str) -> torch.Tensor:
    """Features as a 2-D floating tensor (half precision is computed in float32)."""
    if x.dim() != 2:
        raise InvalidValueError(
            f"{name}: expected a 2-D (num_items, dim) feature matrix, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x


def feature_pair(
    qf: ArrayLike, gf: ArrayLike, device: torch.device | str | None = None
) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    """Query and gallery features as 2-D floating tensors of one dtype on one device (``device``,
    else ``qf``'s), and whether both came as numpy (so the result goes back as numpy)."""
    q, q_np = as_tensor(qf, "qf", device=device)
    g, g_np = as_tensor(gf, "gf", device=q.device)
    q, g = float_features(q, "qf"), float_features(g, "gf")
    if q.shape[1] != g.shape[1]:
        raise InvalidValueError(
            f"qf and gf must have the same feature dimension, got {q.shape[1]} and {g.shape[1]}"
        )
    dtype = torch.promote_types(q.dtype, g.dtype)
    return q.to(dtype), g.to(dtype), q_np and g_np


@contextmanager
def single_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run memory-bound CPU tensor code with one torch thread, restoring the setting after.

    These stages are many short, memory-bound operations: extra intra-op threads add little
    and, on a shared or oversubscribed machine, their synchronisation made them several times
    slower (measured 7x on a busy 2-core machine).  GPU work is left alone.
    """
    old = torch.get_num_threads()
    if torch.device(device).type != "cpu" or old <= 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def chunks(n: int, size: int) -> Iterator[Tuple[int, int]]:
    """Yield ``(start, stop)`` ranges of at most ``size`` covering ``range(n)``."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield start, min(n, start + size)


def topk_smallest_stable(x: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest entries of each row, ordered by (value, column index).

    Equal to ``torch.sort(x, dim=1, stable=True)[:, :k]`` but uses ``topk`` (linear time per
    row); rows where equal values straddle the k-th position are redone with the stable sort
    so that ties are always resolved in favour of the smaller column index.
    """
    n = x.shape[1]
    k = min(int(k), n)
    # one extra entry tells whether equal values straddle the k-th position
    vals, idx = torch.topk(x, min(k + 1, n), dim=1, largest=False, sorted=True)
    tie_rows = torch.nonzero(vals[:, k] == vals[:, k - 1]).flatten() if (k < n and k > 0) else None
    vals, idx = vals[:, :k], idx[:, :k]
    # order the selected entries by (value, index): sort by index, then stable sort by value
    idx, perm = idx.sort(dim=1)
    vals = vals.gather(1, perm)
    vals, perm = vals.sort(dim=1, stable=True)
    idx = idx.gather(1, perm)
    if tie_rows is not None and tie_rows.numel():
        v2, i2 = torch.sort(x[tie_rows], dim=1, stable=True)
        vals[tie_rows], idx[tie_rows] = v2[:, :k], i2[:, :k]
    return vals, idx


def merge_topk_stable(
    vals_a: torch.Tensor, idx_a: torch.Tensor, vals_b: torch.Tensor, idx_b: torch.Tensor, k: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Merge two per-row candidate lists (disjoint column sets) into the ``k`` smallest by (value, index)."""
    vals = torch.cat([vals_a, vals_b], dim=1)
    idx = torch.cat([idx_a, idx_b], dim=1)
    idx, perm = idx.sort(dim=1)
    vals = vals.gather(1, perm)
    vals, perm = vals.sort(dim=1, stable=True)
    idx = idx.gather(1, perm)
    k = min(k, vals.shape[1])
    return vals[:, :k].contiguous(), idx[:, :k].contiguous()


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise InvalidValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    return metric


def squared_euclidean(
    a: torch.Tensor,
    b: torch.Tensor,
    a_sq: torch.Tensor | None = None,
    b_sq: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``|a_i - b_j|^2`` by one matrix product, clamped at 0 against rounding (into ``out`` if given)."""
    if a_sq is None:
        a_sq = a.pow(2).sum(1)
    if b_sq is None:
        b_sq = b.pow(2).sum(1)
    if out is None:
        d = torch.addmm(b_sq.unsqueeze(0), a, b.t(), beta=1.0, alpha=-2.0)
    else:
        d = torch.addmm(b_sq.unsqueeze(0), a, b.t(), beta=1.0, alpha=-2.0, out=out)
    d.add_(a_sq.unsqueeze(1))
    return d.clamp_(min=0)


# --------------------------------------------------------------------------- public
def compute_distance(qf: ArrayLike, gf: ArrayLike, metric: str = "euclidean") -> ArrayLike:
    """Distance matrix ``(num_query, num_gallery)`` between two feature sets.

    Args:
        qf, gf: ``(Q, D)`` and ``(G, D)`` features (numpy arrays or torch tensors).
        metric: ``"euclidean"`` - the plain (not squared) Euclidean distance
            ``sqrt(max(|q|^2 + |g|^2 - 2 q.g, 0))``; ``"cosine"`` - ``1 - cos(q, g)``, the
            features being L2-normalised inside.

    Returns a torch tensor on the input's device for tensor input, a numpy array for numpy
    input.  The dtype is the input's (float16/bfloat16 are computed and returned as float32).
    The Euclidean distance is deliberately not squared: :func:`re_rank` (like the reference
    k-reciprocal code) squares the distances it is given, so ``re_rank`` on these matrices
    equals :func:`re_rank_features` on the features.  Rankings are the same either way.
    """
    check_metric(metric)
    q, g, as_numpy = feature_pair(qf, gf)
    if metric == "euclidean":
        d = squared_euclidean(q, g).sqrt_()
    else:
        qn = torch.nn.functional.normalize(q, dim=1)
        gn = torch.nn.functional.normalize(g, dim=1)
        d = torch.addmm(
            torch.ones((), dtype=q.dtype, device=q.device), qn, gn.t(), beta=1.0, alpha=-1.0
        )
    return d.cpu().numpy() if as_numpy else d
