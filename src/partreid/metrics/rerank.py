"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) without dense N x N matrices.

The classic numpy code (the authors' Python port, reused by most toolkits) concatenates the
query/gallery distance blocks into an N x N matrix (N = queries + gallery), squares it,
divides every column by its maximum and transposes it ("original distance"), argsorts every
row, and fills dense N x N arrays V and V_qe.  It needs several N x N arrays at once.

This module computes the same numbers with:

1. one pass over the N x N distances in blocks, keeping only each row's nearest neighbours
   (ties broken by index, i.e. a stable sort; once a row's list is full, a block only needs
   one comparison per element against the row's current last entry), each row's maximum and
   the query x gallery block.  From distance matrices the blocks are rows of the given
   matrices.  From features they are matrix products, each computed once for both its rows
   and its columns (the matrix is symmetric); see "Features" below;
2. k-reciprocal sets, their expansion (the "2/3 of the candidate's half-size reciprocal set"
   rule) and the Gaussian weights as a sparse matrix V (CSR arrays: a few dozen entries a row);
3. local query expansion ``V_qe[i] = mean of V over i's k2 nearest neighbours`` (sparse);
4. the Jaccard distance ``1 - sum(min) / sum(max)`` only for the query x gallery block, by a
   sparse join of the query rows with the gallery rows of ``V_qe`` (an inverted index);
5. ``final = (1 - lambda) * jaccard + lambda * original`` where ``original`` is the squared
   distance divided by the row maximum (over all N items), as in the reference.

Features.  The query x gallery blocks (which are also the result) are float32 matrix
products.  The query x query and gallery x gallery blocks, about 70% of the work on Market-1501,
only decide which items are neighbours and which is the farthest: on CPUs with native bfloat16
products (AVX512-BF16 / AMX) they are computed in bfloat16, about 3x faster, with a rigorous
per-entry error bound (rounding of the features, the accumulation and the rounding of the
product).  Every row keeps some extra candidates (order-free lists merged by partial
selection); at the end the candidates whose interval can reach the k-th nearest (or the
maximum) get their float32 value, so the neighbour lists, their distances and the row maxima
are those of a float32 computation, ties included.  A row whose list cannot be proven to hold
all of them gets a wider bfloat16 list, and a float32 row if even that is not enough.

Everything is torch code that runs on the CPU or a CUDA device; peak memory is the inputs,
the ``Q x G`` result and one block.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import InvalidValueError
from ..utils.extras import load_faiss
from .distance import (
    ArrayLike,
    as_tensor,
    check_metric,
    chunks,
    feature_pair,
    merge_topk_stable,
    single_thread_on_cpu,
    squared_euclidean,
    topk_smallest_stable,
)

__all__ = ["re_rank", "re_rank_features"]

_BLOCK_ELEMENTS = 1 << 21  # elements of a row block of the given matrices / of a Jaccard block
_PAIR_BUDGET = 1 << 19  # sparse pairs handled at once
_SUB_BLOCK = 4096  # columns per top-k update in the k-NN pass
_GATHER_ELEMENTS = 1 << 20  # feature elements gathered at once when recomputing pairs
_KNN_SLACK = 48  # extra neighbour candidates kept per row with bfloat16 estimates
_FAR_SLOTS = 48  # candidates near the running maximum kept per row with bfloat16 estimates
_REDO_WIDEN = 4  # lists of rows that need a second look are this much wider
_BF16 = "auto"  # same-side blocks in bfloat16: "auto" (fast CPUs), True or False (tests)
_U_BF16 = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
_U_F32 = 2.0**-24


def _bf16_products_are_fast(device: torch.device) -> bool:
    """bfloat16 matrix products with native instructions (CPU only: GPUs get float32 throughout)."""
    if _BF16 != "auto":
        return bool(_BF16)
    if device.type != "cpu":
        return False
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except Exception:  # pragma: no cover - private helpers missing in another torch version
        return False


def _sort_stable(vals: torch.Tensor, idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each row ordered by (value, index)."""
    idx, perm = idx.sort(dim=1)
    vals = vals.gather(1, perm)
    vals, perm = vals.sort(dim=1, stable=True)
    return vals, idx.gather(1, perm)


def _positions(mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``torch.nonzero(mask, as_tuple=True)`` for a contiguous 2-D mask, faster when it is sparse.

    The mask is scanned as 64-bit words (8 entries each); only words holding a ``True`` are
    expanded.  Dense masks fall back to ``torch.nonzero``.
    """
    flat = mask.reshape(-1)
    n = flat.numel()
    n8 = n - n % 8
    if mask.device.type != "cpu" or n8 == 0:
        return torch.nonzero(mask, as_tuple=True)
    words = torch.nonzero(flat[:n8].view(torch.int64)).flatten()
    if words.numel() * 64 > n8:
        return torch.nonzero(mask, as_tuple=True)
    pos = (words.unsqueeze(1) * 8 + torch.arange(8, device=mask.device)).flatten()
    pos = pos[flat[pos]]
    if n8 < n:
        pos = torch.cat([pos, torch.nonzero(flat[n8:]).flatten() + n8])
    cols = mask.shape[1]
    return torch.div(pos, cols, rounding_mode="floor"), pos % cols


def _by_row(r: torch.Tensor, c: torch.Tensor, v: torch.Tensor, n: int):
    """Candidates grouped by row ``r`` (ascending) as padded per-row arrays ``(rows, vals, cols)``
    (padding ``(inf, n)``), in pieces of bounded memory split at row boundaries."""
    start, total = 0, r.numel()
    while start < total:
        stop = min(total, start + _PAIR_BUDGET // 4)
        if stop < total:  # do not split a row
            stop = int(torch.searchsorted(r, r[stop], right=False))
            if stop <= start:
                stop = int(torch.searchsorted(r, r[start], right=True))
        rr = r[start:stop]
        rows_u, inverse, counts = torch.unique_consecutive(
            rr, return_inverse=True, return_counts=True
        )
        slot = (
            torch.arange(rr.numel(), device=r.device) - (torch.cumsum(counts, 0) - counts)[inverse]
        )
        width = int(counts.max())
        cv = torch.full((rows_u.numel(), width), float("inf"), dtype=torch.float32, device=r.device)
        ci = torch.full((rows_u.numel(), width), n, dtype=torch.int64, device=r.device)
        cv[inverse, slot] = v[start:stop]
        ci[inverse, slot] = c[start:stop]
        yield rows_u, cv, ci
        start = stop


# ============================================================================ running lists
class _Smallest:
    """Each row's ``width`` smallest values seen so far and their columns, in (value, column) order.

    Columns must reach every row in increasing index order: then, once a row holds ``width``
    entries, only values strictly below its last one can enter, so an update is one comparison
    per element plus a merge of the few survivors.  Empty slots hold ``(inf, n)``.
    """

    def __init__(self, n: int, width: int, device: torch.device):
        self.n, self.width, self.device = n, width, device
        self.vals = torch.full((n, width), float("inf"), dtype=torch.float32, device=device)
        self.idx = torch.full((n, width), n, dtype=torch.int64, device=device)

    def add_pairs(self, r: torch.Tensor, c: torch.Tensor, v: torch.Tensor) -> None:
        """Merge candidates grouped by row ``r`` (ascending), columns ascending within a row."""
        for rows_u, cv, ci in _by_row(r, c, v, self.n):
            self.vals[rows_u], self.idx[rows_u] = merge_topk_stable(
                self.vals[rows_u], self.idx[rows_u], cv, ci, self.width
            )

    def _merge_range(self, r0: int, r1: int, v: torch.Tensor, i: torch.Tensor) -> None:
        step = max(1, _PAIR_BUDGET // (self.width + v.shape[1]))  # bounded memory
        for a, b in chunks(r1 - r0, step):
            self.vals[r0 + a : r0 + b], self.idx[r0 + a : r0 + b] = merge_topk_stable(
                self.vals[r0 + a : r0 + b], self.idx[r0 + a : r0 + b], v[a:b], i[a:b], self.width
            )

    def rows(self, r0: int, c0: int, x: torch.Tensor) -> None:
        """``x[t, j]`` is the value of row ``r0 + t`` at column ``c0 + j``."""
        r1 = r0 + x.shape[0]
        for s0, s1 in chunks(x.shape[1], _SUB_BLOCK):
            xs = x[:, s0:s1]
            last = self.vals[r0:r1, -1]
            if torch.isinf(last).any():  # rows still filling: a top-k of the block
                v, i = topk_smallest_stable(xs, self.width)
                self._merge_range(r0, r1, v, i + (c0 + s0))
                continue
            r, c = torch.nonzero(xs < last.unsqueeze(1), as_tuple=True)
            self.add_pairs(r + r0, c + (c0 + s0), xs[r, c])

    def cols(self, c0: int, r0: int, x: torch.Tensor) -> None:
        """``x[t, j]`` is the value of row ``c0 + j`` at column ``r0 + t`` (a transposed block)."""
        c1 = c0 + x.shape[1]
        last = self.vals[c0:c1, -1]
        if torch.isinf(last).any():
            v, i = topk_smallest_stable(x.t().contiguous(), self.width)
            self._merge_range(c0, c1, v, i + r0)
            return
        t, j = torch.nonzero(x < last.unsqueeze(0), as_tuple=True)
        order = torch.argsort(j, stable=True)
        t, j = t[order], j[order]
        self.add_pairs(j + c0, t + r0, x[t, j])


class _Candidates:
    """Unordered per-row candidate lists: each row's ``width`` smallest values seen so far (ties
    cut arbitrarily) and ``last``, the largest value kept (inf while the row has empty slots).

    The order-free version of :class:`_Smallest` for estimates, which are re-ranked exactly
    later: merges are a partial selection instead of two sorts.
    """

    def __init__(self, n: int, width: int, device: torch.device):
        self.n, self.width, self.device = n, width, device
        self.vals = torch.full((n, width), float("inf"), dtype=torch.float32, device=device)
        self.idx = torch.full((n, width), n, dtype=torch.int64, device=device)
        self.last = torch.full((n,), float("inf"), dtype=torch.float32, device=device)

    def merge(self, rows, v: torch.Tensor, i: torch.Tensor) -> None:
        """Merge candidate values ``v`` / columns ``i`` into the rows ``rows`` (slice or index)."""
        v = torch.cat([self.vals[rows], v], 1)
        i = torch.cat([self.idx[rows], i], 1)
        v, pos = v.topk(self.width, dim=1, largest=False, sorted=False)
        self.vals[rows], self.idx[rows] = v, i.gather(1, pos)
        self.last[rows] = v.amax(1)

    def add_pairs(self, r: torch.Tensor, c: torch.Tensor, v: torch.Tensor) -> None:
        """Merge candidates grouped by row ``r`` (ascending)."""
        for rows_u, cv, ci in _by_row(r, c, v, self.n):
            self.merge(rows_u, cv, ci)


class _RowMax:
    """Each row's running maximum."""

    def __init__(self, n: int, device: torch.device):
        self.top = torch.full((n,), float("-inf"), dtype=torch.float32, device=device)

    def rows(self, r0: int, c0: int, x: torch.Tensor) -> None:
        top = self.top[r0 : r0 + x.shape[0]]
        torch.maximum(top, x.amax(1), out=top)

    def cols(self, c0: int, r0: int, x: torch.Tensor) -> None:
        top = self.top[c0 : c0 + x.shape[1]]
        torch.maximum(top, x.amax(0), out=top)


class _NearFar:
    """Candidates of estimated distances, for each row: its ``width`` smallest (``near``) and,
    for the maximum, its ``far_width`` largest that came within ``window[row]`` of the running
    maximum ``top`` when they were seen (``far``, negated) - a superset of the values within
    ``window`` of the final maximum.  Both filters share one pass over a block."""

    def __init__(
        self, n: int, width: int, far_width: int, window: torch.Tensor, device: torch.device
    ):
        self.near = _Candidates(n, width, device)
        self.far = _Candidates(n, far_width, device)
        self.top = torch.full((n,), float("-inf"), dtype=torch.float32, device=device)
        self.window = window

    def _split(
        self,
        r: torch.Tensor,
        c: torch.Tensor,
        v: torch.Tensor,
        last: torch.Tensor,
        thr: torch.Tensor,
    ) -> None:
        """Hand the filtered entries (absolute rows ``r``, grouped) to the lists."""
        sel = v < last
        self.near.add_pairs(r[sel], c[sel], v[sel])
        sel = v >= thr
        if sel.any():
            r, c, v = r[sel], c[sel], v[sel]
            self.top.scatter_reduce_(0, r, v, reduce="amax")
            self.far.add_pairs(r, c, v.neg())

    def _filters(self, r0: int, c0: int, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(thr, last)`` of rows ``r0..`` for their block ``x`` (row ``r0 + t`` at column
        ``c0 + j`` in ``x[t, j]``; a transposed view is copied only where it is needed); rows still
        filling their near list take the block's smallest first, then filter nothing."""
        r1 = r0 + x.shape[0]
        top = self.top[r0:r1]
        if torch.isinf(top).any():
            torch.maximum(top, x.amax(1), out=top)
        thr = torch.maximum(top - self.window[r0:r1], self.far.last[r0:r1].neg())
        last = self.near.last[r0:r1]
        if torch.isinf(last).any():
            x = x.contiguous()
            v, i = x.topk(min(self.near.width, x.shape[1]), dim=1, largest=False, sorted=False)
            self.near.merge(slice(r0, r1), v, i + c0)
            last = torch.full_like(last, float("-inf"))
        return thr, last

    def rows(self, r0: int, c0: int, x: torch.Tensor) -> None:
        """``x[t, j]`` is the value of row ``r0 + t`` at column ``c0 + j``."""
        thr, last = self._filters(r0, c0, x)
        mask = x < last.unsqueeze(1)
        mask |= x >= thr.unsqueeze(1)
        r, c = _positions(mask)
        self._split(r + r0, c + c0, x[r, c], last[r], thr[r])

    def cols(self, c0: int, r0: int, x: torch.Tensor) -> None:
        """``x[t, j]`` is the value of row ``c0 + j`` at column ``r0 + t`` (a transposed block)."""
        thr, last = self._filters(c0, r0, x.t())
        mask = x < last.unsqueeze(0)
        mask |= x >= thr.unsqueeze(0)
        t, j = _positions(mask)
        order = torch.argsort(j, stable=True)
        t, j = t[order], j[order]
        self._split(j + c0, t + r0, x[t, j], last[j], thr[j])


# ============================================================================ distance sources
class _MatrixSource:
    """Squared 'original distance' from given distance blocks, as the reference builds it.

    The reference divides the column-wise maxima of ``M = [[qq, qg], [qg^T, gg]]`` and then
    transposes, so row ``i`` of its original distance is column ``i`` of ``M**2``.  For the
    usual symmetric ``qq``/``gg`` that is simply row ``i``.
    """

    def __init__(self, qg: torch.Tensor, qq: torch.Tensor, gg: torch.Tensor):
        self.qg, self.qq, self.gg = qg, qq, gg
        self.n_q, self.n_g = qg.shape
        self.device = qg.device

    def row_blocks(self, rows: int) -> Iterator[Tuple[int, int, torch.Tensor]]:
        """Rows ``a:b`` of ``M**2`` (float32), i.e. columns ``a:b`` of the original distance."""
        n_q, n = self.n_q, self.n_q + self.n_g
        buf = torch.empty(rows * n, dtype=torch.float32, device=self.device)
        for a, b in chunks(n, rows):
            x = buf[: (b - a) * n].view(b - a, n)
            if a < n_q:  # query rows of M: [qq | qg]
                e = min(b, n_q)
                self.put_sq(x[: e - a, :n_q], self.qq[a:e])
                self.put_sq(x[: e - a, n_q:], self.qg[a:e])
            if b > n_q:  # gallery rows of M: [qg^T | gg]
                s, e = max(a, n_q) - n_q, b - n_q
                self.put_sq(x[b - a - (e - s) :, :n_q], self.qg[:, s:e].t())
                self.put_sq(x[b - a - (e - s) :, n_q:], self.gg[s:e])
            yield a, b, x

    @staticmethod
    def put_sq(dst: torch.Tensor, src: torch.Tensor) -> None:
        """dst = float32(src ** 2), squared in src's precision like the reference."""
        if src.dtype == torch.float32:
            torch.mul(src, src, out=dst)
        else:
            dst.copy_(src.square())

    def pairs(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Squared original distance (before normalisation) of row ``i`` and column ``j``: M[j, i]**2."""
        n_q = self.n_q
        out = torch.empty(i.shape, dtype=torch.float32, device=self.device)
        iq, jq = i < n_q, j < n_q
        for sel, src, r, c in (
            (iq & jq, self.qq, j, i),
            (iq & ~jq, self.qg, i, j - n_q),
            (~iq & jq, self.qg, j, i - n_q),
            (~iq & ~jq, self.gg, j - n_q, i - n_q),
        ):
            if sel.any():
                out[sel] = src[r[sel], c[sel]].square().to(torch.float32)
        return out


class _FeatureSource:
    """Distances from features.

    Neighbours and maxima are found in the squared-Euclidean space ``e = |x - y|^2`` of the
    features (for the cosine metric, of the L2-normalised features, with ``|x|^2`` taken as 1 so
    that ``e / 2 = 1 - cos`` exactly as the reference computes it).  :meth:`value` maps ``e`` to
    the reference's original distance: ``e`` itself, or ``(1 - cos)^2 = (e / 2)^2``.
    """

    def __init__(self, q: torch.Tensor, g: torch.Tensor, metric: str, bf16: bool):
        self.metric = metric
        f = torch.cat([q, g], 0)
        if metric == "cosine":
            f = torch.nn.functional.normalize(f, dim=1)
        self.f = f.contiguous()
        if metric == "cosine":
            self.sq = torch.ones(f.shape[0], dtype=f.dtype, device=f.device)
        else:
            self.sq = self.f.pow(2).sum(1)
        self.n_q, self.n_g = q.shape[0], g.shape[0]
        self.device = f.device
        # bfloat16 estimates for the same-side blocks (float32 features only)
        self.bf16 = bool(bf16) and f.dtype == torch.float32 and self.n_g > 0
        if self.bf16:
            self._init_bounds()

    def _init_bounds(self) -> None:
        """bfloat16 copies of the centred features and per-row error bounds.

        With ``xc = fl(x - mean)`` (centring keeps the distances and makes products and their
        rounding errors smaller) and ``xb = bf16(xc)``, the estimate
        ``z_ij = sqc_i + sqc_j - 2 bf16(xb_i . xb_j)`` is within
        ``bound_i + rho * |sqc_i + sqc_j - z_ij|`` of the float32 value ``e_ij`` used later
        (:meth:`exact_pairs`).  ``bound`` covers, with Cauchy-Schwarz on the residuals, the
        rounding of the centring and of the features to bfloat16, the float32 accumulation of
        both products and of the squared norms, the formation of the sums and, for cosine, the
        unit norms; the ``rho`` term is the rounding of the product to bfloat16.  Everything is
        computed in float32 with the rounding of these few norms absorbed by a 1% margin.
        """
        d = self.f.shape[1]
        n, dev = self.f.shape[0], self.device
        u, uf = _U_F32, 1.01  # unit roundoff, margin on computed norms
        mean = self.f.mean(0)
        self.fb = torch.empty(self.f.shape, dtype=torch.bfloat16, device=dev)
        self.sqc = torch.empty(n, dtype=torch.float32, device=dev)
        a, e = (torch.empty(n, dtype=torch.float32, device=dev) for _ in range(2))
        norm = torch.linalg.vector_norm
        for r0, r1 in chunks(n, max(1, (8 * _GATHER_ELEMENTS) // d)):
            c = self.f[r0:r1] - mean
            self.fb[r0:r1] = c
            self.sqc[r0:r1] = norm(c, dim=1).square_()
            fbf = self.fb[r0:r1].float()
            a[r0:r1] = norm(fbf, dim=1)  # |xb|
            e[r0:r1] = norm(c.sub_(fbf), dim=1)  # the rounding residual xc - xb, exact in float32
        fsq = self.sq if self.metric == "euclidean" else norm(self.f, dim=1).square_()
        sqc = self.sqc
        # |centred (real) - xb| <= |xc - xb| + u |xc|
        e = (e + u * sqc.sqrt()) * uf
        a = a * uf
        # maxima over all items: the bounds hold for any pair
        a_max, e_max = a.max(), e.max()
        fn = fsq.sqrt() * uf
        f_max = fn.max()
        sq = self.sq.to(torch.float32)
        sqc_m, sq_m = sqc + sqc.max(), sq + sq.max()
        dot = (
            e * a_max + a * e_max + e * e_max + 2 * d * u * a * a_max
        )  # bfloat16 product vs |x_i - x_j|^2
        bound = (
            2 * dot
            + (d + 20) * u * sqc_m * uf  # z's sums and squared norms
            + 4 * d * u * fn * f_max
            + (d + 20) * u * sq_m * uf  # the float32 value e
            + 1e-6 * sqc_m
        )
        if self.metric == "cosine":  # e uses |x|^2 = 1; the centred estimate the real norms
            dev_n = (fsq - 1).abs() + d * u * fsq * uf
            bound = bound + dev_n + dev_n.max()
        self.bound = bound * uf
        self.rho = 1.001 * _U_BF16 / (1 - _U_BF16)
        # largest possible |z - e| in a row: |bf16 product| <= |xb_i||xb_j| (1 + u_bf16)(1 + 2 d u)
        self.hmax = (self.bound + 2 * self.rho * a * a_max * (1 + _U_BF16) * (1 + 2 * d * u)) * uf

    def value(self, e: torch.Tensor) -> torch.Tensor:
        """The reference's squared original distance from ``e`` (in place)."""
        return e if self.metric == "euclidean" else e.mul_(0.5).square_()

    def exact_block(self, a: int, b: int, c: int, d: int, out: torch.Tensor) -> torch.Tensor:
        """``e`` of rows ``a:b`` and columns ``c:d`` in float32 (``out``: buffer of that shape)."""
        if self.f.dtype == torch.float32:
            return squared_euclidean(self.f[a:b], self.f[c:d], self.sq[a:b], self.sq[c:d], out=out)
        return out.copy_(squared_euclidean(self.f[a:b], self.f[c:d], self.sq[a:b], self.sq[c:d]))

    def approx_block(
        self, a: int, b: int, c: int, d: int, out: torch.Tensor, prod: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """``z ~ e`` from bfloat16 products (``prod``: bfloat16 buffer of that shape)."""
        # -2 x (exact scaling) as a bfloat16 product, then sqc_i + sqc_j in float32
        zero = torch.zeros((), dtype=torch.bfloat16, device=self.device)
        if prod is None:
            prod = torch.addmm(zero, self.fb[a:b], self.fb[c:d].t(), beta=0, alpha=-2)
        else:
            torch.addmm(zero, self.fb[a:b], self.fb[c:d].t(), beta=0, alpha=-2, out=prod)
        out.copy_(prod)
        out.add_(self.sqc[a:b].unsqueeze(1)).add_(self.sqc[c:d].unsqueeze(0))
        return out

    def approx_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Estimates ``z`` of the given rows against all items (bfloat16 products)."""
        z = torch.mm(self.fb.index_select(0, rows), self.fb.t()).float()
        return z.mul_(-2).add_(self.sqc[rows].unsqueeze(1)).add_(self.sqc.unsqueeze(0))

    def exact_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``e`` of the given rows against all items (float32)."""
        x = self.f.index_select(0, rows)
        return squared_euclidean(x, self.f, self.sq[rows], self.sq).to(torch.float32)

    def exact_pairs(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """``e`` of the pairs ``(i[p], j[p])`` in float32, gathered in bounded chunks."""
        dots = torch.empty(i.shape, dtype=self.f.dtype, device=self.device)
        d = self.f.shape[1]
        step = max(1, _GATHER_ELEMENTS // (2 * d))  # two buffers that stay in cache
        xi = torch.empty((min(step, i.numel()), d), dtype=self.f.dtype, device=self.device)
        xj = torch.empty_like(xi)
        for a, b in chunks(i.numel(), step):
            m = b - a
            x = torch.index_select(self.f, 0, i[a:b], out=xi[:m])
            y = torch.index_select(self.f, 0, j[a:b], out=xj[:m])
            torch.sum(x.mul_(y), 1, out=dots[a:b])
        return (self.sq[i] + self.sq[j]).sub_(dots, alpha=2).clamp_(min=0).to(torch.float32)

    def pairs(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Squared original distance of the pairs ``(i[p], j[p])``."""
        return self.value(self.exact_pairs(i, j))


# ============================================================================ step 1: k-NN pass
def _matrix_pass(src: _MatrixSource, k: int):
    """From distance matrices: per-row ``k`` nearest neighbours (stable order) and their
    distances, and the row maxima.  Row ``i`` of the original distance is column ``i`` of
    ``M**2``, so the lists are fed column-wise from row blocks of ``M**2``."""
    n = src.n_q + src.n_g
    knn = _Smallest(n, k, src.device)
    far = _RowMax(n, src.device)
    with single_thread_on_cpu(src.device):
        for a, _, x in src.row_blocks(max(1, _BLOCK_ELEMENTS // n)):
            knn.cols(0, a, x)
            far.cols(0, a, x)
    return knn.idx, knn.vals, far.top


def _feature_pass(src: _FeatureSource, k: int, block: int, need_knn: bool):
    """From features: candidate lists (float32 ``e`` for query x gallery pairs, bfloat16
    estimates for the same-side blocks) or, without bfloat16, exact neighbour lists; the row
    maxima and the query x gallery block of the original distance."""
    n_q, n_g, dev = src.n_q, src.n_g, src.device
    n = n_q + n_g
    if src.bf16:
        knn = far = _NearFar(n, min(n, k + _KNN_SLACK), min(n, _FAR_SLOTS), 2.002 * src.hmax, dev)
    else:
        knn, far = (_Smallest(n, k, dev) if need_knn else None), _RowMax(n, dev)
    qg = torch.empty((n_q, n_g), dtype=torch.float32, device=dev)
    ranges = list(chunks(n_q, block)) + [(n_q + a, n_q + b) for a, b in chunks(n_g, block)]
    pairs = [(r, c) for i, r in enumerate(ranges) for c in ranges[i:]]  # upper triangle of blocks
    if src.bf16:
        # the order-free lists: diagonal blocks first so that every row's list is filled from
        # its own rows (no transposed selections), gallery rows before query rows
        pairs.sort(key=lambda p: (p[0] != p[1], p[0][0] < n_q))
    side = max(b - a for a, b in ranges)
    buf = torch.empty(side * side, dtype=torch.float32, device=dev)
    pbuf = torch.empty(side * side, dtype=torch.bfloat16, device=dev) if src.bf16 else None
    for (a, b), (c, d) in pairs:
        out = buf[: (b - a) * (d - c)].view(b - a, d - c)
        if src.bf16 and (a >= n_q or c < n_q):  # gallery x gallery or query x query
            x = src.approx_block(a, b, c, d, out, pbuf[: (b - a) * (d - c)].view(b - a, d - c))
        else:
            x = src.exact_block(a, b, c, d, out)
        with single_thread_on_cpu(dev):
            for lists in (knn, far) if knn is not far else (knn,):
                if lists is not None:
                    lists.rows(a, c, x)
                    if c != a:
                        lists.cols(c, a, x)
            if a < n_q and c >= n_q:
                src.value(qg[a:b, c - n_q : d - n_q].copy_(x))
    return knn, far, qg


def _entry_bounds(
    src: _FeatureSource,
    rows: torch.Tensor,
    z: torch.Tensor,
    idx: torch.Tensor,
    approx: torch.Tensor,
) -> torch.Tensor:
    """Half-widths of the intervals around the estimates ``z`` (0 where not ``approx``)."""
    j = idx.clamp(max=src.n_q + src.n_g - 1)
    sq = src.sqc
    h = src.bound[rows].unsqueeze(1) + src.rho * (sq[rows].unsqueeze(1) + sq[j] - z).abs()
    return torch.where(approx, h, torch.zeros((), device=z.device))


def _near_needs(
    src: _FeatureSource,
    rows: torch.Tensor,
    z: torch.Tensor,
    idx: torch.Tensor,
    last: Optional[torch.Tensor],
    approx: torch.Tensor,
    k: int,
):
    """Which candidates can be among the ``k`` nearest, and whether the list surely holds them all.

    ``z`` / ``idx``: each row's candidates (estimates where ``approx``), every other item being
    ``>= last`` (``last`` None: the list holds every item).
    """
    n = src.n_q + src.n_g
    valid = idx < n
    h = _entry_bounds(src, rows, z, idx, approx)
    upper = torch.where(valid, z + h, torch.full((), float("inf"), device=z.device))
    reach = upper.kthvalue(k, dim=1).values  # the k-th nearest is at most this
    need = valid & (z - h <= reach.unsqueeze(1))
    if last is None:
        return need, torch.ones_like(reach, dtype=torch.bool)
    # lower bound of z - h over the items outside (z >= last): h grows with |sqc_i + sqc_j - z|
    sq, rho = src.sqc, src.rho
    outside = (
        torch.minimum(
            last * (1 + rho) - rho * (sq[rows] + sq.max()),
            last * (1 - rho) + rho * (sq[rows] + sq.min()),
        )
        - src.bound[rows]
    )
    return need, torch.minimum(outside, last) > reach


def _far_needs(
    src: _FeatureSource,
    rows: torch.Tensor,
    z: torch.Tensor,
    idx: torch.Tensor,
    least: Optional[torch.Tensor],
    approx: torch.Tensor,
):
    """Which candidates can be the farthest item, and whether the list surely holds it.

    ``z`` / ``idx``: candidates (estimates where ``approx``), every other item within ``window``
    of the maximum being ``<= least`` (``least`` None: nothing was left out).
    """
    n = src.n_q + src.n_g
    valid = idx < n
    h = _entry_bounds(src, rows, z, idx, approx)
    low = torch.where(valid, z - h, torch.full((), float("-inf"), device=z.device)).amax(1)
    need = valid & (z + h >= low.unsqueeze(1))
    if least is None:
        return need, torch.ones_like(low, dtype=torch.bool)
    return need, least + src.hmax[rows] < low


def _exact_values(src: _FeatureSource, parts) -> list:
    """For each ``(rows, z, idx, mask)``: ``z`` with the entries under ``mask`` replaced by their
    float32 values; pairs shared by several parts or by both orders are computed once."""
    n = src.n_q + src.n_g
    found = [torch.nonzero(mask, as_tuple=True) for _, _, _, mask in parts]
    i = torch.cat([rows[r] for (rows, _, _, _), (r, _) in zip(parts, found)])
    j = torch.cat([idx[r, c] for (_, _, idx, _), (r, c) in zip(parts, found)])
    key = torch.minimum(i, j) * n + torch.maximum(i, j)
    key, inverse = torch.unique(key, return_inverse=True)
    vals = src.exact_pairs(torch.div(key, n, rounding_mode="floor"), key % n)[inverse]
    out, start = [], 0
    for (_, z, _, _), (r, c) in zip(parts, found):
        z = z.clone()
        z[r, c] = vals[start : start + r.numel()]
        start += r.numel()
        out.append(z)
    return out


def _exact_lists(src: _FeatureSource, rows: torch.Tensor, near, far, k: int):
    """The ``k`` nearest (if ``near``) and the maximum of ``rows`` from candidate lists.

    ``near`` / ``far``: ``(z, idx, bound, approx)`` candidates for :func:`_near_needs` /
    :func:`_far_needs` (``near`` None: no neighbour list wanted). The candidates that can matter
    get their float32 values. Returns ``(nn, nn_vals, rowmax, ok)``, ``ok`` False for the rows
    whose lists cannot be shown to hold every item that matters (``nn``, ``nn_vals`` None
    without ``near``).
    """
    inf = torch.full((), float("inf"), device=src.device)
    parts, ok = [], torch.ones(rows.numel(), dtype=torch.bool, device=src.device)
    if near is not None:
        need, complete = _near_needs(src, rows, *near, k)
        parts.append((rows, near[0], near[1], need & near[3]))
        ok &= complete
    need_f, complete = _far_needs(src, rows, *far)
    parts.append((rows, far[0], far[1], need_f & far[3]))
    ok &= complete
    exact = _exact_values(src, parts)
    rowmax = torch.where(need_f, exact[-1], -inf).amax(1)
    if near is None:
        return None, None, rowmax, ok
    vals, idx = _sort_stable(torch.where(need, exact[0], inf), near[1])
    return idx[:, :k], vals[:, :k], rowmax, ok


def _finish_features(src: _FeatureSource, knn, far, k: int, need_knn: bool):
    """Exact neighbour lists and row maxima (``e`` space) from the candidates of the pass.

    Candidates whose interval can reach the k-th nearest (or the maximum) get their float32
    value.  Rows whose list cannot be shown to hold all of them get a second, wider list from a
    bfloat16 row against all items, and if that is not enough a float32 row.
    """
    n, n_q, dev = src.n_q + src.n_g, src.n_q, src.device
    if not src.bf16:
        return (knn.idx, knn.vals) if need_knn else (None, None), far.top
    kk = min(k, n)
    rows = torch.arange(n, device=dev)
    gallery_row = (rows >= n_q).unsqueeze(1)
    # estimates: pairs on the same side (query x query, gallery x gallery)
    with single_thread_on_cpu(dev):
        near = None
        if need_knn:
            cand = knn.near
            approx = (gallery_row == (cand.idx >= n_q)) & (cand.idx < n)
            near = (cand.vals, cand.idx, cand.last if cand.width < n else None, approx)
        fz, fidx = far.far.vals.neg(), far.far.idx
        approx_f = (gallery_row == (fidx >= n_q)) & (fidx < n)
        nn, nn_vals, rowmax, ok = _exact_lists(
            src, rows, near, (fz, fidx, far.far.last.neg(), approx_f), kk
        )
        if need_knn:
            nn, nn_vals = nn.contiguous(), nn_vals.contiguous()
        redo = torch.nonzero(~ok).flatten()
        if redo.numel():
            _redo_rows(src, redo, nn, nn_vals, rowmax, kk)
    return (nn, nn_vals), rowmax


def _redo_rows(src: _FeatureSource, redo: torch.Tensor, nn, nn_vals, rowmax, k: int) -> None:
    """Neighbours (if ``nn``) and maxima of rows whose candidates were not enough: wider lists from
    bfloat16 rows against all items, then float32 rows where still needed."""
    n = src.n_q + src.n_g
    width = min(n, _REDO_WIDEN * (k + _KNN_SLACK))
    far_width = min(n, _REDO_WIDEN * _FAR_SLOTS)
    exact_rows = []
    for a, b in chunks(redo.numel(), max(1, _BLOCK_ELEMENTS // n)):
        rows = redo[a:b]
        z = src.approx_rows(rows)  # every entry an estimate
        near = None
        if nn is not None:
            v, i = z.topk(width, dim=1, largest=False, sorted=False)
            near = (v, i, v.amax(1) if width < n else None, torch.ones_like(v, dtype=torch.bool))
        fv, fi = z.topk(far_width, dim=1, largest=True, sorted=False)
        far = (fv, fi, fv.amin(1) if far_width < n else None, torch.ones_like(fv, dtype=torch.bool))
        row_nn, row_vals, row_max, ok = _exact_lists(src, rows, near, far, k)
        rowmax[rows] = row_max
        if nn is not None:
            nn[rows], nn_vals[rows] = row_nn, row_vals
        exact_rows.append(rows[~ok])
    exact_rows = torch.cat(exact_rows)
    for a, b in chunks(exact_rows.numel(), max(1, _BLOCK_ELEMENTS // n)):
        rows = exact_rows[a:b]
        x = src.exact_rows(rows)
        rowmax[rows] = x.amax(1)
        if nn is not None:
            v, i = topk_smallest_stable(x, k)
            nn[rows], nn_vals[rows] = i, v


def _faiss_knn(src: _FeatureSource, k: int) -> torch.Tensor:
    """Nearest neighbours (self included) of all N items with faiss (CPU, exact search)."""
    faiss = load_faiss("re_rank_features(use_faiss=True)")
    f = src.f.detach().to("cpu", torch.float32).contiguous().numpy()
    index = faiss.IndexFlatL2(f.shape[1])  # e space: also the cosine order (normalised features)
    index.add(f)
    _, nn = index.search(f, k)
    return torch.from_numpy(nn.astype(np.int64)).to(src.device)


# ============================================================================ sparse helpers
def _gather_segments(indptr: torch.Tensor, segs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For CSR-like ``indptr`` and segment ids ``segs``: (owner position in segs, entry position)."""
    start = indptr[segs]
    cnt = indptr[segs + 1] - start
    total = int(cnt.sum())
    owner = torch.repeat_interleave(
        torch.arange(segs.numel(), device=segs.device), cnt, output_size=total
    )
    first = torch.cumsum(cnt, 0) - cnt
    pos = start[owner] + torch.arange(total, device=segs.device) - first[owner]
    return owner, pos


def _indptr(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


# ============================================================================ step 2: V
def _reciprocal(nbrs: torch.Tensor, block_rows: int) -> torch.Tensor:
    """mask[i, a]: row i is among the neighbours of its neighbour nbrs[i, a] (k-reciprocal)."""
    n = nbrs.shape[0]
    out = torch.empty(nbrs.shape, dtype=torch.bool, device=nbrs.device)
    for a, b in chunks(n, block_rows):
        rows = torch.arange(a, b, device=nbrs.device).view(-1, 1, 1)
        out[a:b] = (nbrs[nbrs[a:b]] == rows).any(2)
    return out


def _pair_distances(
    src,
    rows: torch.Tensor,
    elems: torch.Tensor,
    valid: torch.Tensor,
    nn: torch.Tensor,
    nn_vals: Optional[torch.Tensor],
) -> torch.Tensor:
    """Raw squared distances of ``rows`` (c,) to ``elems`` (c, L, ascending, valid first).

    Pairs found in the rows' neighbour lists reuse the distances of the k-NN pass; the others
    are computed by ``src.pairs``.
    """
    out = torch.zeros(elems.shape, dtype=torch.float32, device=elems.device)
    todo = valid
    if nn_vals is not None:
        nbr, perm = nn[rows].sort(1)
        pos = torch.searchsorted(nbr, elems).clamp_(max=nbr.shape[1] - 1)
        hit = (nbr.gather(1, pos) == elems) & valid
        known = nn_vals[rows].gather(1, perm.gather(1, pos))
        out = torch.where(hit, known, out)
        todo = valid & ~hit
    r, c = torch.nonzero(todo, as_tuple=True)
    if r.numel():
        out[r, c] = src.pairs(rows[r], elems[r, c])
    return out


def _build_v(src, nn: torch.Tensor, nn_vals: Optional[torch.Tensor], rowmax: torch.Tensor, k1: int):
    """Sparse V (CSR arrays): Gaussian weights on each item's expanded k-reciprocal set."""
    n = nn.shape[0]
    dev = nn.device
    k1p = min(k1 + 1, n)
    khp = min(int(np.around(k1 / 2.0)) + 1, n)
    r1, r2 = nn[:, :k1p].contiguous(), nn[:, :khp].contiguous()
    rec1 = _reciprocal(r1, max(1, _PAIR_BUDGET // (k1p * k1p)))
    rec2 = _reciprocal(r2, max(1, _PAIR_BUDGET // (khp * khp)))
    rows_out, cols_out, vals_out = [], [], []
    block = max(1, _PAIR_BUDGET // (k1p * khp))
    for a, b in chunks(n, block):
        f, m = r1[a:b], rec1[a:b]  # forward neighbours, reciprocal mask
        cand_sets, cand_mask = r2[f], rec2[f]  # each neighbour's half-size reciprocal set
        # membership of the candidates' members in the k-reciprocal set (sorted, padded with n)
        kr_sorted = torch.where(m, f, n).sort(1).values
        flat = cand_sets.reshape(b - a, -1)
        pos = torch.searchsorted(kr_sorted, flat).clamp_(max=k1p - 1)
        in_kr = (kr_sorted.gather(1, pos) == flat).view_as(cand_sets)
        inter = (in_kr & cand_mask).sum(2).to(torch.float64)
        size = cand_mask.sum(2).to(torch.float64)
        taken = m & (inter > (2.0 / 3.0) * size)
        elems = torch.cat(
            [
                torch.where(m, f, n),
                torch.where(taken.unsqueeze(2) & cand_mask, cand_sets, n).flatten(1),
            ],
            1,
        )
        elems = elems.sort(1).values
        uniq = elems < n
        uniq[:, 1:] &= elems[:, 1:] != elems[:, :-1]
        elems = torch.where(uniq, elems, n).sort(1).values  # unique members first, ascending
        width = int(uniq.sum(1).max())
        elems = elems[:, :width].contiguous()
        valid = elems < n
        rows = torch.arange(a, b, device=dev)
        od = _pair_distances(src, rows, elems, valid, nn, nn_vals) / rowmax[a:b].unsqueeze(1)
        w = torch.exp(-od) * valid
        w = w / w.sum(1, keepdim=True)
        rows_out.append(rows.unsqueeze(1).expand_as(elems)[valid])
        cols_out.append(elems[valid])
        vals_out.append(w[valid])
    rows, cols, vals = torch.cat(rows_out), torch.cat(cols_out), torch.cat(vals_out)
    return _indptr(rows, n), cols, vals


def _query_expansion(indptr, cols, vals, nn: torch.Tensor, k2: int):
    """V_qe[i] = mean of V's rows over i's k2 nearest neighbours (sparse)."""
    n = nn.shape[0]
    k2 = min(k2, n)
    nbrs = nn[:, :k2]
    deg = (indptr[1:] - indptr[:-1])[nbrs].sum(1)  # entries to merge per row
    rows_out, cols_out, vals_out = [], [], []
    a = 0
    bounds = torch.cumsum(deg, 0)
    while a < n:
        start = int(bounds[a - 1]) if a else 0
        b = max(a + 1, int(torch.searchsorted(bounds, start + _PAIR_BUDGET, right=True)))
        b = min(b, n)
        owner, pos = _gather_segments(indptr, nbrs[a:b].reshape(-1))
        key = torch.div(owner, k2, rounding_mode="floor") * n + cols[pos]
        uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
        summed = torch.zeros(uniq.numel(), dtype=vals.dtype, device=vals.device).index_add_(
            0, inv, vals[pos]
        )
        rows_out.append(torch.div(uniq, n, rounding_mode="floor") + a)
        cols_out.append(uniq % n)
        vals_out.append(summed / k2)
        a = b
    rows = torch.cat(rows_out)
    return _indptr(rows, n), torch.cat(cols_out), torch.cat(vals_out)


# ============================================================================ step 4: Jaccard
def _jaccard_combine(
    csr: list,
    qg: torch.Tensor,
    rowmax: torch.Tensor,
    lam: float,
    fill: Optional[Callable[[int, int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """In place on ``qg`` (raw squared Q x G): ``(1-lam) * jaccard + lam * qg / rowmax``.

    ``csr`` is a list ``[indptr, cols, vals]`` of ``V_qe``; it is emptied so that the arrays can
    be freed once the inverted index is built.  ``fill(a, b, block)``, if given, first writes
    the raw rows ``a:b`` into ``qg``.
    """
    indptr, cols, vals = csr
    csr.clear()
    n_q, n_g = qg.shape
    n = n_q + n_g
    dev = qg.device
    # the query rows, and an inverted index over the gallery rows: for each column, the
    # gallery rows holding it (int32 rows)
    q_end = int(indptr[n_q])
    q_rows = torch.repeat_interleave(
        torch.arange(n_q, device=dev), indptr[1 : n_q + 1] - indptr[:n_q]
    )
    q_cols, q_vals = cols[:q_end].clone(), vals[:q_end].clone()
    g_cols = cols[q_end:]
    order = torch.argsort(g_cols, stable=True)
    inv_vals = vals[q_end:][order]
    g_rows = torch.repeat_interleave(
        torch.arange(n_g, dtype=torch.int32, device=dev), indptr[n_q + 1 :] - indptr[n_q:-1]
    )
    inv_rows = g_rows[order]
    colptr = _indptr(g_cols, n)
    del indptr, cols, vals, g_cols, order, g_rows
    # pairs generated by each query row, to size the groups
    col_deg = colptr[1:] - colptr[:-1]
    per_query = torch.zeros(n_q, dtype=torch.int64, device=dev).index_add_(
        0, q_rows, col_deg[q_cols]
    )
    bounds = torch.cumsum(per_query, 0)
    q_ptr = torch.cat([bounds.new_zeros(1), torch.bincount(q_rows, minlength=n_q).cumsum(0)])
    max_rows = max(1, _BLOCK_ELEMENTS // max(1, n_g))
    tbuf = torch.empty(max_rows * n_g, dtype=torch.float32, device=dev)
    a = 0
    while a < n_q:
        start = int(bounds[a - 1]) if a else 0
        b = int(torch.searchsorted(bounds, start + _PAIR_BUDGET, right=True))
        b = min(max(b, a + 1), a + max_rows, n_q)
        e0, e1 = int(q_ptr[a]), int(q_ptr[b])
        owner, pos = _gather_segments(colptr, q_cols[e0:e1])
        mins = torch.minimum(q_vals[e0:e1][owner], inv_vals[pos])
        flat = (q_rows[e0:e1][owner] - a).mul_(n_g).add_(inv_rows[pos])
        del owner, pos
        tmin = tbuf[: (b - a) * n_g].zero_().index_add_(0, flat, mins).view(b - a, n_g)
        del flat, mins
        # lam * d / rowmax + (1 - lam) * (1 - t / (2 - t)), in few passes over the block
        block = qg[a:b]
        if fill is not None:
            fill(a, b, block)
        block.mul_((lam / rowmax[a:b]).unsqueeze(1)).add_(1 - lam)
        block.addcdiv_(tmin, 2 - tmin, value=-(1 - lam))
        a = b
    return qg


# ============================================================================ driver
def _check_params(k1: int, k2: int, lambda_value: float) -> Tuple[int, int, float]:
    if int(k1) < 1 or int(k2) < 1:
        raise InvalidValueError(f"k1 and k2 must be positive integers, got k1={k1}, k2={k2}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise InvalidValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    return int(k1), int(k2), float(lambda_value)


def _sparse_stages(
    src,
    nn: torch.Tensor,
    nn_vals: Optional[torch.Tensor],
    rowmax: torch.Tensor,
    k1: int,
    k2: int,
    lam: float,
    out: Optional[torch.Tensor],
    fill: Optional[Callable[[int, int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Steps 2-5 from the neighbour lists (raw squared distances) and the row maxima."""
    rowmax = torch.where(rowmax > 0, rowmax, torch.ones_like(rowmax))  # all-zero rows: avoid 0/0
    # the sparse stages are many short memory-bound operations (see single_thread_on_cpu)
    with single_thread_on_cpu(src.device):
        indptr, cols, vals = _build_v(src, nn, nn_vals, rowmax, k1)
        del nn_vals
        if k2 != 1:
            indptr, cols, vals = _query_expansion(indptr, cols, vals, nn, k2)
        del nn
        csr = [indptr, cols, vals]
        del indptr, cols, vals
        if out is None:
            out = torch.empty((src.n_q, src.n_g), dtype=torch.float32, device=src.device)
        return _jaccard_combine(csr, out, rowmax, lam, fill)


def re_rank(
    q_g_dist: ArrayLike,
    q_q_dist: ArrayLike,
    g_g_dist: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """k-reciprocal re-ranking from distance matrices (the classic interface).

    Args:
        q_g_dist, q_q_dist, g_g_dist: ``(Q, G)``, ``(Q, Q)``, ``(G, G)`` distances (numpy or
            torch; e.g. from :func:`compute_distance`).  As in the reference they are squared
            and each row is divided by its maximum over all ``Q + G`` items.
        k1, k2, lambda_value: the paper's parameters (20, 6, 0.3).

    Returns the re-ranked ``(Q, G)`` float32 numpy array, equal to the reference algorithm
    (ties in the neighbour ranking broken by index) up to float32 rounding.  Memory: the
    inputs, the result and one row block - no N x N array is formed.
    """
    k1, k2, lam = _check_params(k1, k2, lambda_value)
    qg, _ = as_tensor(q_g_dist, "q_g_dist")
    dev = qg.device
    qq, _ = as_tensor(q_q_dist, "q_q_dist", device=dev)
    gg, _ = as_tensor(g_g_dist, "g_g_dist", device=dev)
    n_q, n_g = qg.shape if qg.dim() == 2 else (-1, -1)
    for name, t, shape in (
        ("q_g_dist", qg, (n_q, n_g)),
        ("q_q_dist", qq, (n_q, n_q)),
        ("g_g_dist", gg, (n_g, n_g)),
    ):
        if t.dim() != 2 or tuple(t.shape) != shape or min(shape) < 1:
            raise InvalidValueError(
                f"{name}: expected shape {shape} (from q_g_dist {tuple(qg.shape)}), got {tuple(t.shape)}"
            )
    qg, qq, gg = (t if t.is_floating_point() else t.double() for t in (qg, qq, gg))
    src = _MatrixSource(qg, qq, gg)
    nn, nn_vals, rowmax = _matrix_pass(src, min(max(k1 + 1, k2), n_q + n_g))
    out = _sparse_stages(
        src,
        nn,
        nn_vals,
        rowmax,
        k1,
        k2,
        lam,
        None,
        fill=lambda a, b, block: src.put_sq(block, qg[a:b]),
    )
    return out.cpu().numpy()


def re_rank_features(
    qf: ArrayLike,
    gf: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    metric: str = "euclidean",
    chunk_size: int = 4096,
    device: Optional[Union[str, torch.device]] = None,
    use_faiss: Union[bool, str] = "auto",
) -> ArrayLike:
    """k-reciprocal re-ranking straight from features, never forming an N x N matrix.

    Equals ``re_rank(compute_distance(qf, gf, metric), compute_distance(qf, qf, metric),
    compute_distance(gf, gf, metric))`` up to float32 rounding: the "original distance" is the
    squared Euclidean distance (or ``(1 - cos)^2``) divided by its row maximum over all
    ``N = Q + G`` items.  Distances that differ by about one float32 rounding step (1e-7
    relative) can be ordered differently by the two computations; when such a pair sits at the
    edge of a k-NN list the result changes visibly (the algorithm is discontinuous there): on a
    Market-1501-sized problem a near-tie or two, changing under 1,000 of the 53.6M entries by up
    to ~1e-2.  On CPUs with native bfloat16 products most of the work is done in bfloat16 and
    checked in float32 (see the module notes); the result is the same.

    Args:
        qf, gf: ``(Q, D)`` and ``(G, D)`` features, numpy or torch.
        k1, k2, lambda_value: the paper's parameters.
        metric: ``"euclidean"`` or ``"cosine"``.
        chunk_size: block side of the blocked N x N pass (memory ~ ``2 * chunk_size**2`` floats
            plus the ``(Q, G)`` result).
        device: where to compute (default: the device of ``qf`` if it is a tensor, else CPU).
        use_faiss: ``True`` takes the nearest-neighbour lists from faiss (``faiss-cpu``; ties may
            then be ordered differently); ``False`` or ``"auto"`` use the blocked torch pass, which
            is the faster choice here because the reference's row-maximum normalisation needs
            every distance anyway, and the neighbours come from the same blocks at no extra cost.

    Returns the ``(Q, G)`` re-ranked distances: a float32 torch tensor on the compute device
    for tensor input, a numpy array for numpy input.
    """
    k1, k2, lam = _check_params(k1, k2, lambda_value)
    check_metric(metric)
    if use_faiss not in (True, False, "auto"):
        raise InvalidValueError(f"use_faiss: expected True, False or 'auto', got {use_faiss!r}")
    if int(chunk_size) < 1:
        raise InvalidValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
    if device is None:
        device = qf.device if isinstance(qf, torch.Tensor) else "cpu"
    q, g, as_numpy = feature_pair(qf, gf, device)
    if q.shape[0] < 1 or g.shape[0] < 1:
        raise InvalidValueError(
            f"qf {tuple(q.shape)} and gf {tuple(g.shape)}: expected non-empty features"
        )
    src = _FeatureSource(q, g, metric, _bf16_products_are_fast(q.device))
    k = min(max(k1 + 1, k2), src.n_q + src.n_g)
    nn_faiss = _faiss_knn(src, k) if use_faiss is True else None
    knn, far, qg = _feature_pass(src, k, int(chunk_size), need_knn=nn_faiss is None)
    (nn, nn_vals), rowmax = _finish_features(src, knn, far, k, need_knn=nn_faiss is None)
    del knn, far
    if nn_faiss is not None:
        nn = nn_faiss
    else:
        nn_vals = src.value(nn_vals)
    out = _sparse_stages(src, nn, nn_vals, src.value(rowmax), k1, k2, lam, qg)
    return out.cpu().numpy() if as_numpy else out
