"""Query expansion: average QE (Chum et al., ICCV 2007) and alpha-QE (Radenovic et al., TPAMI 2018).

Both work on L2-normalised features (QE is defined for unit vectors and cosine similarity):
the features are normalised inside, each query is replaced by a (weighted) sum of itself and
its ``k`` nearest gallery features, and the result is normalised again.  Optionally the same
is done to every gallery feature with its ``k`` nearest *other* gallery features
("database-side augmentation", DBA).  Both functions return ``(qf_expanded, gf_out)`` where
``gf_out`` is the L2-normalised gallery (expanded only with ``expand_gallery=True``), so the
pair can go straight into :func:`compute_distance` (either metric ranks unit vectors alike).
Neighbour ties are broken by gallery index.  Work is chunked; numpy in, numpy out.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..errors import InvalidValueError
from .distance import ArrayLike, as_tensor, chunks, feature_pair, topk_smallest_stable

__all__ = ["average_query_expansion", "alpha_query_expansion"]

_CHUNK_ELEMENTS = 1 << 24


def _inputs(qf: ArrayLike, gf: ArrayLike, k: int):
    q, g, as_numpy = feature_pair(qf, gf)
    if int(k) < 0:
        raise InvalidValueError(f"k: expected a non-negative number of neighbours, got {k}")
    return F.normalize(q, dim=1), F.normalize(g, dim=1), as_numpy


def _neighbours(
    x: torch.Tensor, g: torch.Tensor, k: int, exclude_self_offset: Optional[int] = None
):
    """Top-``k`` gallery neighbours of the rows of ``x`` by cosine similarity: (sims, idx)."""
    sims, idx = [], []
    rows = max(1, _CHUNK_ELEMENTS // max(1, g.shape[0]))
    for a, b in chunks(x.shape[0], rows):
        neg = -(x[a:b] @ g.t())
        if exclude_self_offset is not None:  # a gallery item is not its own neighbour
            r = torch.arange(a, b, device=x.device)
            neg[r - a, r + exclude_self_offset] = float("inf")
        v, i = topk_smallest_stable(neg, k)
        sims.append(-v)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def _expand(
    x: torch.Tensor, g: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    out = x.clone()
    if idx.shape[1]:
        rows = max(1, _CHUNK_ELEMENTS // (idx.shape[1] * g.shape[1]))
        for a, b in chunks(x.shape[0], rows):
            out[a:b] += torch.bmm(weights[a:b].unsqueeze(1), g[idx[a:b]]).squeeze(1)
    return F.normalize(out, dim=1)


def _finish(q: torch.Tensor, g: torch.Tensor, to_numpy: bool):
    return (q.cpu().numpy(), g.cpu().numpy()) if to_numpy else (q, g)


def average_query_expansion(
    qf: ArrayLike,
    gf: ArrayLike,
    distmat: Optional[ArrayLike] = None,
    k: int = 5,
    expand_gallery: bool = False,
) -> Tuple[ArrayLike, ArrayLike]:
    """Average query expansion: ``q' = normalise(q + sum of its k nearest gallery features)``.

    Features are L2-normalised first.  The neighbours come from ``distmat`` (``(Q, G)``,
    smaller = closer) when given, else from cosine similarity.  With ``expand_gallery`` each
    gallery feature is likewise averaged with its ``k`` nearest other gallery features (by
    cosine similarity).  Returns ``(qf_expanded, gf_normalised_or_expanded)``.
    """
    q, g, to_numpy = _inputs(qf, gf, k)
    k = min(int(k), g.shape[0])
    if distmat is not None:
        d, _ = as_tensor(distmat, "distmat", device=q.device)
        if tuple(d.shape) != (q.shape[0], g.shape[0]):
            raise InvalidValueError(
                f"distmat: expected shape {(q.shape[0], g.shape[0])}, got {tuple(d.shape)}"
            )
        idx = torch.cat(
            [
                topk_smallest_stable(d[a:b], k)[1]
                for a, b in chunks(d.shape[0], max(1, _CHUNK_ELEMENTS // g.shape[0]))
            ]
        )
    else:
        idx = _neighbours(q, g, k)[1]
    q_out = _expand(q, g, idx, torch.ones(idx.shape, dtype=q.dtype, device=q.device))
    g_out = g
    if expand_gallery:
        kg = min(k, g.shape[0] - 1)
        gidx = _neighbours(g, g, kg, exclude_self_offset=0)[1]
        g_out = _expand(g, g, gidx, torch.ones(gidx.shape, dtype=g.dtype, device=g.device))
    return _finish(q_out, g_out, to_numpy)


def alpha_query_expansion(
    qf: ArrayLike,
    gf: ArrayLike,
    k: int = 5,
    alpha: float = 3.0,
    expand_gallery: bool = False,
) -> Tuple[ArrayLike, ArrayLike]:
    """alpha-QE: ``q' = normalise(q + sum_i max(cos(q, g_i), 0)^alpha * g_i)`` over the ``k`` nearest g_i.

    Features are L2-normalised first; the query itself has weight ``cos(q, q)^alpha = 1``.
    ``alpha = 0`` gives average QE (negative similarities then weigh 1 as well).  With
    ``expand_gallery`` (alpha-DBA) each gallery feature is expanded the same way with its
    ``k`` nearest other gallery features.  Returns ``(qf_expanded, gf_normalised_or_expanded)``.
    """
    q, g, to_numpy = _inputs(qf, gf, k)
    k = min(int(k), g.shape[0])
    alpha = float(alpha)

    def weights(s: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(s) if alpha == 0 else s.clamp(min=0).pow(alpha)

    sims, idx = _neighbours(q, g, k)
    q_out = _expand(q, g, idx, weights(sims))
    g_out = g
    if expand_gallery:
        gs, gidx = _neighbours(g, g, min(k, g.shape[0] - 1), exclude_self_offset=0)
        g_out = _expand(g, g, gidx, weights(gs))
    return _finish(q_out, g_out, to_numpy)
