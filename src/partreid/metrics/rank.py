"""Ranking metrics for re-identification: CMC, mAP and mINP (single-query protocol).

The protocol (Market-1501 / DukeMTMC / MSMT17 style), for each query:

* gallery items with the same identity AND the same camera as the query are ignored ("junk");
  a camera id of ``-1`` means "unknown camera" and disables this filter for the pair;
* the remaining ("valid") gallery items are ordered by distance, ties broken by gallery
  index (i.e. a stable sort), and the valid items with the query's identity are the true
  matches;
* a query without any true match is skipped (and counted in ``num_skipped_queries``).

With the 0-based ranks ``r_1 < ... < r_n`` of the ``n`` true matches in that ordering:
``AP = mean_k k / (r_k + 1)``, ``INP = n / (r_n + 1)`` and ``CMC[t] = [r_1 <= t]``.

The implementation never sorts the whole query x gallery matrix.  For a chunk of queries it
keeps only the gallery items not farther than the query's hardest true match (every item
ranked before some true match is among them), sorts those few items by (distance, index) and
reads the ranks of the true matches off that order.  When most of the chunk lies before the
hardest match (a weak model), it instead histograms every item into fine equal-width bins that
span the query's match distances (a monotone map, so an item in a lower bin than a match is
certainly before it), reads "items before the match's bin" off a cumulative count, and compares
exactly - distance, then gallery index - only the few items that share a bin with a match.
That is a handful of vectorised passes over the chunk and no sort or binary search per item;
rows whose bins degenerate (many tied distances) fall back to bucketing every item between the
query's sorted match distances with ``searchsorted``.
All work is torch tensor code on the device of ``distmat`` (a CUDA tensor is evaluated on its
GPU); memory is bounded by the chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np
import torch

from ..errors import InvalidValueError
from .distance import ArrayLike, as_tensor, chunks, single_thread_on_cpu

__all__ = ["evaluate_rank", "rank_summary"]

# elements of the query x gallery matrix handled at once when chunk_size is not given
_DEFAULT_CHUNK_ELEMENTS = 1 << 23
# the binned strategy works through its chunk in blocks of about this many elements (cache)
_BINNED_BLOCK_ELEMENTS = 1 << 19
# above this fraction of the chunk lying before the hardest match, bucket instead of sorting
_DENSE_FRACTION = 0.02
# binned strategy: bins per gallery item between a query's easiest and hardest match, and the
# most (selected item x match) comparisons per chunk element before falling back to searchsorted
_BINS_PER_ITEM = 0.125
_MAX_TIE_WORK = 2.0
_LANES = 4


@dataclass
class _Problem:
    """Validated inputs plus the per-query list of same-identity gallery items."""

    dist: torch.Tensor  # (Q, G) floating
    q_pids: torch.Tensor
    g_pids: torch.Tensor
    uniq_pids: torch.Tensor  # sorted unique gallery pids
    id_start: torch.Tensor  # start of each identity in g_order
    id_count: torch.Tensor  # number of gallery items of each identity
    g_order: torch.Tensor  # gallery indices sorted by (pid, index)
    q_id: torch.Tensor  # index of the query's pid in uniq_pids (clamped; see q_count)
    same_id: torch.Tensor  # (Q, S) gallery indices with the query's pid, padded with 0
    match: torch.Tensor  # (Q, S) bool: same pid, valid (a true match)
    junk: torch.Tensor  # (Q, S) bool: same pid and same known camera (ignored)
    n_match: torch.Tensor  # (Q,) number of true matches


def _as_ids(x: Any, name: str, n: int, device: torch.device) -> torch.Tensor:
    t, _ = as_tensor(x, name)
    t = t.reshape(-1) if t.dim() > 1 and t.numel() == n else t
    if t.dim() != 1 or t.shape[0] != n:
        raise InvalidValueError(
            f"{name}: expected a 1-D array of length {n} (matching distmat), got shape {tuple(t.shape)}"
        )
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise InvalidValueError(f"{name}: expected integer ids, got non-integer values")
    return t.to(device=device, dtype=torch.int64)


def _prepare(distmat: ArrayLike, q_pids, g_pids, q_camids, g_camids) -> _Problem:
    dist, _ = as_tensor(distmat, "distmat")
    if dist.dim() != 2:
        raise InvalidValueError(
            f"distmat: expected a 2-D (num_query, num_gallery) matrix, got shape {tuple(dist.shape)}"
        )
    num_q, num_g = dist.shape
    if num_q == 0 or num_g == 0:
        raise InvalidValueError(f"distmat: empty query or gallery (shape {tuple(dist.shape)})")
    if not dist.is_floating_point():
        dist = dist.to(torch.float64)
    elif dist.dtype in (torch.float16, torch.bfloat16):
        dist = dist.float()
    dev = dist.device
    qp = _as_ids(q_pids, "q_pids", num_q, dev)
    gp = _as_ids(g_pids, "g_pids", num_g, dev)
    qc = _as_ids(q_camids, "q_camids", num_q, dev)
    gc = _as_ids(g_camids, "g_camids", num_g, dev)

    g_order = torch.argsort(gp, stable=True)
    uniq, counts = torch.unique_consecutive(gp[g_order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.searchsorted(uniq, qp).clamp_(max=uniq.numel() - 1)
    found = uniq[pos] == qp
    q_count = torch.where(found, counts[pos], torch.zeros_like(pos))
    width = max(int(q_count.max()), 1)
    offs = torch.arange(width, device=dev)
    in_seg = offs.unsqueeze(0) < q_count.unsqueeze(1)
    slot = (starts[pos].unsqueeze(1) + offs.unsqueeze(0)).clamp_(max=num_g - 1)
    same_id = torch.where(in_seg, g_order[slot], torch.zeros_like(slot))
    junk = in_seg & (gc[same_id] == qc.unsqueeze(1)) & (qc.unsqueeze(1) != -1)
    match = in_seg & ~junk
    return _Problem(
        dist, qp, gp, uniq, starts, counts, g_order, pos, same_id, match, junk, match.sum(1)
    )


def _chunk_rows(chunk_size: int | None, num_g: int) -> int:
    if chunk_size is None:
        return max(1, _DEFAULT_CHUNK_ELEMENTS // num_g)
    if int(chunk_size) < 1:
        raise InvalidValueError(
            f"chunk_size: expected a positive number of query rows, got {chunk_size}"
        )
    return int(chunk_size)


def _segment_starts(sorted_rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Start offset of each row's segment in a row-sorted flat list."""
    counts = torch.bincount(sorted_rows, minlength=n_rows)
    return torch.cumsum(counts, 0) - counts


def _match_ranks_dense(
    dc: torch.Tensor,
    same: torch.Tensor,
    match: torch.Tensor,
    junk: torch.Tensor,
    n_match: torch.Tensor,
):
    """Same result as :func:`_match_ranks`, by bucketing every item between the sorted matches.

    Used when most of the gallery lies before the hardest match (sorting it would cost more):
    ``pos_j`` = number of match distances below ``d_j`` (one ``searchsorted`` per row), a
    histogram of ``pos`` gives, for the k-th match, the number of items with ``d <= t_k``;
    items tied with a match distance are then corrected by gallery index, and junk removed.
    """
    c, num_g = dc.shape
    dev = dc.device
    ds = dc.gather(1, same)
    t_val, t_idx = _sorted_matches(ds, same, match, num_g)
    m = t_val.shape[1]
    pos = torch.searchsorted(t_val, dc)  # (c, G): match distances strictly below each item
    # items tied with a match distance (the matches themselves at least)
    tie_r, tie_j = torch.nonzero(t_val.gather(1, pos.clamp(max=m - 1)) == dc, as_tuple=True)
    pos += torch.arange(c, device=dev).unsqueeze(1) * (m + 1)
    before = (
        torch.bincount(pos.view(-1), minlength=c * (m + 1))
        .view(c, m + 1)
        .cumsum(1)[:, :m]
        .contiguous()
    )
    del pos
    # before[r, k] = #{j: d_j <= t_k}; remove the tied items that come after the match by index
    tv = dc[tie_r, tie_j]
    late = (t_val[tie_r] == tv.unsqueeze(1)) & (t_idx[tie_r] <= tie_j.unsqueeze(1))  # (ties, m)
    lr, lk = torch.nonzero(late, as_tuple=True)
    before.view(-1).index_add_(0, tie_r[lr] * m + lk, torch.full_like(lr, -1))
    return _per_match(before - _junk_before(ds, same, junk, t_val, t_idx), n_match)


def _sorted_matches(ds: torch.Tensor, same: torch.Tensor, match: torch.Tensor, num_g: int):
    """Each row's true matches sorted by (distance, gallery index); padding (+inf, num_g) last."""
    inf = torch.tensor(float("inf"), dtype=ds.dtype, device=ds.device)
    key = torch.where(match, ds, inf)
    order = torch.argsort(key, dim=1, stable=True)
    order = order.gather(
        1, torch.argsort((~match.gather(1, order)).to(torch.int8), dim=1, stable=True)
    )
    t_val = key.gather(1, order).contiguous()
    t_idx = torch.where(match.gather(1, order), same.gather(1, order), torch.full_like(same, num_g))
    return t_val, t_idx


def _junk_before(ds, same, junk, t_val, t_idx) -> torch.Tensor:
    """(c, m): junk items (same identity, same camera) ordered before each sorted match."""
    inf = torch.tensor(float("inf"), dtype=ds.dtype, device=ds.device)
    dj = torch.where(junk, ds, inf).unsqueeze(2)
    jb = junk.unsqueeze(2) & (
        (dj < t_val.unsqueeze(1))
        | ((dj == t_val.unsqueeze(1)) & (same.unsqueeze(2) < t_idx.unsqueeze(1)))
    )
    return jb.sum(1)


def _per_match(rank: torch.Tensor, n_match: torch.Tensor):
    """``(rows, k, ranks)`` of the real matches in a (c, m) table of sorted matches' ranks
    (the padding columns beyond each row's ``n_match`` dropped)."""
    c, m = rank.shape
    k = torch.arange(1, m + 1, device=rank.device).expand(c, m)
    real = k <= n_match.unsqueeze(1)
    rows = torch.arange(c, device=rank.device).unsqueeze(1).expand(c, m)
    return rows[real], k[real], rank[real]


def _match_ranks_binned(
    dc: torch.Tensor,
    same: torch.Tensor,
    match: torch.Tensor,
    junk: torch.Tensor,
    n_match: torch.Tensor,
    work: Dict[Any, torch.Tensor] | None = None,
):
    """Same result as :func:`_match_ranks`, for chunks where most items precede the hardest match.

    Each row's span [easiest match, hardest match] is cut into ``B`` equal bins (plus one bin
    below and one above); ``bin(d) = trunc(clamp((d - lo') * s, 0, B + 2.5))`` is built from
    correctly rounded subtract / multiply / clamp / truncate steps, each monotone, so an item
    in a lower bin than a match has a smaller distance.  ``before[r, k]`` = items in lower bins
    (a cumulative histogram) + items in the match's own bin that precede it by (distance,
    index), compared exactly.  Falls back to :func:`_match_ranks_dense` when a span is not
    finite or too many items share a bin with a match (heavily tied distances).
    """
    c, num_g = dc.shape
    dev = dc.device
    ds = dc.gather(1, same)
    t_val, t_idx = _sorted_matches(ds, same, match, num_g)
    m = t_val.shape[1]
    has = n_match > 0
    last = (n_match - 1).clamp(min=0).unsqueeze(1)
    zero = torch.zeros((), dtype=dc.dtype, device=dev)
    lo = torch.where(has, t_val[:, 0], zero)
    width = torch.where(has, t_val.gather(1, last).squeeze(1), zero) - lo
    if not bool(torch.isfinite(width).all()):
        return _match_ranks_dense(dc, same, match, junk, n_match)
    nb = int(min(max(_BINS_PER_ITEM * num_g, 16), 1 << 16))
    pos_w = width[width > 0]
    typical = pos_w.mean() if pos_w.numel() else torch.ones((), dtype=dc.dtype, device=dev)
    scale = nb / torch.where(width > 0, width, typical)
    if not bool(torch.isfinite(scale).all()):
        return _match_ranks_dense(dc, same, match, junk, n_match)
    lo = lo - 1.5 / scale  # the easiest match lands at ~1.5, the hardest at ~nb + 1.5
    nbins = nb + 3
    # key = (row * nbins + bin) * LANES + column % LANES: consecutive items count into different
    # histogram cells, so crowded bins do not serialise bincount on one counter
    lanes = _LANES
    n_keys = c * nbins * lanes
    idx_dtype = torch.int32 if n_keys < 2**31 - 1 else torch.int64
    y = _buffer(work, "y", dc.numel(), dc.dtype, dev).view(c, num_g)
    torch.sub(dc, lo.unsqueeze(1), out=y)
    y.mul_(scale.unsqueeze(1)).clamp_(0, nb + 2.5)
    keys = _buffer(work, "keys", dc.numel(), idx_dtype, dev).view(c, num_g)
    keys.copy_(y)  # truncation toward zero (monotone) on values >= 0
    keys *= lanes
    keys += _lane_base(work, c, num_g, nbins, lanes, idx_dtype, dev)
    counts = torch.bincount(keys.view(-1), minlength=n_keys).view(c, nbins, lanes).sum(2)
    lower = (torch.cumsum(counts, 1) - counts).view(-1)  # items in lower bins of the same row
    real = torch.arange(m, device=dev).unsqueeze(0) < n_match.unsqueeze(1)
    t_key = keys.gather(1, t_idx.clamp(max=num_g - 1)).to(torch.int64) // lanes  # row * nbins + bin
    flag = torch.zeros(n_keys, dtype=torch.uint8, device=dev)
    flag[((t_key[real] * lanes).unsqueeze(1) + torch.arange(lanes, device=dev)).view(-1)] = 1
    # items sharing a bin with some true match of their row
    shared = _buffer(work, "shared", dc.numel(), torch.uint8, dev)
    torch.index_select(flag, 0, keys.view(-1), out=shared)
    sr, sj = torch.nonzero(shared.view(c, num_g), as_tuple=True)
    if sr.numel() * m > _MAX_TIE_WORK * dc.numel():
        return _match_ranks_dense(dc, same, match, junk, n_match)
    before = lower[t_key.clamp(max=c * nbins - 1)]  # (c, m); padding columns are dropped below
    sv, sk = dc[sr, sj].unsqueeze(1), keys[sr, sj].to(torch.int64).unsqueeze(1) // lanes
    tv, ti = t_val[sr], t_idx[sr]
    ahead = (sk == t_key[sr]) & ((sv < tv) | ((sv == tv) & (sj.unsqueeze(1) < ti)))
    before.index_add_(0, sr, ahead.to(before.dtype))
    return _per_match(before - _junk_before(ds, same, junk, t_val, t_idx), n_match)


def _lane_base(work, c: int, num_g: int, nbins: int, lanes: int, dtype, dev) -> torch.Tensor:
    """``row * nbins * lanes + column % lanes`` for a (c, num_g) block (cached across blocks)."""
    key = ("lane_base", c, num_g, nbins, lanes, dtype)
    base = None if work is None else work.get(key)
    if base is None:
        base = (torch.arange(c, device=dev, dtype=dtype) * (nbins * lanes)).unsqueeze(1) + (
            torch.arange(num_g, device=dev, dtype=dtype) % lanes
        ).unsqueeze(0)
        if work is not None:
            work[key] = base
    return base


def _buffer(
    work: Dict[Any, torch.Tensor] | None, name: str, n: int, dtype: torch.dtype, dev
) -> torch.Tensor:
    """A flat scratch tensor of ``n`` elements, reused across chunks (no fresh pages per chunk)."""
    if work is None:
        return torch.empty(n, dtype=dtype, device=dev)
    buf = work.get(name)
    if buf is None or buf.numel() < n or buf.dtype != dtype:
        buf = work[name] = torch.empty(n, dtype=dtype, device=dev)
    return buf[:n]


def _match_ranks(p: _Problem, a: int, b: int, work: Dict[Any, torch.Tensor] | None = None):
    """Ranks of the true matches of queries ``a:b``.

    Returns ``(rows, k, ranks)`` for every true match, sorted by (row, rank): local query row,
    1-based index ``k`` of the match in its query's ordering, and its 0-based rank among the
    valid gallery items.
    """
    dc = p.dist[a:b].contiguous()
    c, num_g = dc.shape
    if torch.isnan(dc.amax()):  # max propagates NaN: one cheap reduction per chunk
        raise InvalidValueError("distmat: contains NaN distances; rankings are undefined")
    same, match, junk = p.same_id[a:b], p.match[a:b], p.junk[a:b]
    ds = dc.gather(1, same)
    neg_inf = torch.tensor(float("-inf"), dtype=dc.dtype, device=dc.device)
    thr = torch.where(match, ds, neg_inf).amax(1)
    # every item ranked before some true match is not farther than the hardest match
    # (the fraction of items selected, estimated on a sample of columns, picks the strategy)
    sample = dc[:, :: max(1, num_g // 1024)]
    if int(torch.count_nonzero(sample <= thr.unsqueeze(1))) > _DENSE_FRACTION * sample.numel():
        step = max(1, _BINNED_BLOCK_ELEMENTS // num_g)
        parts = [
            _match_ranks_binned(
                dc[i : i + step],
                same[i : i + step],
                match[i : i + step],
                junk[i : i + step],
                p.n_match[a:b][i : i + step],
                work,
            )
            for i in range(0, c, step)
        ]
        return (
            torch.cat([r + i * step for i, (r, _, _) in enumerate(parts)]),
            torch.cat([k for _, k, _ in parts]),
            torch.cat([rk for _, _, rk in parts]),
        )
    flat = torch.nonzero((dc <= thr.unsqueeze(1)).view(-1)).squeeze(1)
    rows = torch.div(flat, num_g, rounding_mode="floor")
    keep = p.n_match[a:b][rows] > 0  # rows without a match select only -inf entries, if any
    flat, rows = flat[keep], rows[keep]
    if flat.numel() == 0:
        return rows, rows, rows
    vals = dc.view(-1)[flat]
    # flag the selected items: 1 = true match, 2 = junk (ignored)
    flags = torch.zeros(c * num_g, dtype=torch.int8, device=dc.device)
    base = torch.arange(c, device=dc.device).unsqueeze(1) * num_g
    flags[(base + same)[match]] = 1
    flags[(base + same)[junk]] = 2
    f = flags[flat]
    # order by (row, distance, gallery index): flat is already in (row, index) order
    order = torch.argsort(vals, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    rows, f = rows[order], f[order]
    valid = (f != 2).to(torch.int64)
    before = torch.cumsum(valid, 0) - valid  # valid items before each element (global)
    starts = _segment_starts(rows, c)
    rank = before - before[starts.clamp(max=before.numel() - 1)][rows]
    is_match = f == 1
    m_rows, m_rank = rows[is_match], rank[is_match]
    k = torch.arange(m_rows.numel(), device=dc.device) - _segment_starts(m_rows, c)[m_rows] + 1
    return m_rows, k, m_rank


def evaluate_rank(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    chunk_size: int | None = None,
    per_query: bool = False,
    single_gallery_shot: int = 0,
    seed: int = 0,
) -> Dict[str, Any]:
    """CMC, mAP and mINP of a query x gallery distance matrix (single-query protocol).

    Args:
        distmat: ``(Q, G)`` distances (numpy or torch; a CUDA tensor is evaluated on its GPU).
        q_pids, g_pids, q_camids, g_camids: integer identity / camera ids; camera ``-1`` is
            unknown and disables the same-camera filter for that query-gallery pair.
        max_rank: length of the CMC curve.  If it exceeds the gallery size the curve is
            padded with its last value (1.0): a valid query always has its first match within
            the gallery.
        chunk_size: query rows per chunk (default: about 8M matrix elements per chunk).
        per_query: also return ``ap``, each query's average precision (float64 array of length
            ``Q``, NaN for queries without a valid match), e.g. for confidence intervals.
        single_gallery_shot: if positive, also the classic CUHK03 "single-gallery-shot" CMC
            over this many rounds of draws (the classic protocol uses 10; ``0``: not computed).
            For each valid query and round, one gallery image is drawn uniformly at random for
            every gallery identity (for the query's own identity: one of its valid true
            matches, junk excluded as above); the CMC counts whether the drawn true match is
            within the top ``t`` of the drawn images (ties by gallery index), averaged over
            rounds and valid queries.
        seed: seed of those draws (made on the CPU, so the result does not depend on the
            device; independent per query and round).

    On the CPU the work runs with one torch thread (restored afterwards): it is memory-bound,
    and intra-op threads only added synchronisation cost in our measurements.

    Returns a dict: ``cmc`` (float64 array of length ``max_rank``, fractions of valid
    queries), ``mAP`` and ``mINP`` (floats in [0, 1]), ``num_valid_queries`` and
    ``num_skipped_queries`` (queries without any valid true match).  Ties in distance are
    broken by gallery index.  With ``single_gallery_shot`` the dict also holds ``cmc_sgs``
    (float64 array of length ``max_rank``) and ``repeats`` (the number of rounds); ``cmc``,
    ``mAP`` and ``mINP`` stay those of the full gallery (what the classic CUHK03 code reports
    too).  Raises ``ValueError`` if no query has a valid match.
    """
    if int(max_rank) < 1:
        raise InvalidValueError(f"max_rank: expected a positive integer, got {max_rank}")
    if int(single_gallery_shot) < 0:
        raise InvalidValueError(
            "single_gallery_shot: expected the number of rounds of draws (e.g. 10) or 0 for "
            f"none, got {single_gallery_shot}"
        )
    dist, _ = as_tensor(distmat, "distmat")
    with single_thread_on_cpu(dist.device):
        out, p = _evaluate_rank(
            dist, q_pids, g_pids, q_camids, g_camids, int(max_rank), chunk_size, per_query
        )
        if int(single_gallery_shot) > 0:
            out["cmc_sgs"] = _single_gallery_shot_cmc(
                p, int(max_rank), int(single_gallery_shot), seed, out["num_valid_queries"]
            )
            out["repeats"] = int(single_gallery_shot)
    return out


def rank_summary(result: Dict[str, Any], name: str = "") -> Dict[str, Any]:
    """An :func:`evaluate_rank` result packed as partreid reports it.

    Returns ``rank1``, ``rank5``, ``rank10``, ``mAP``, ``mINP`` (fractions),
    ``num_valid_queries``, ``num_skipped_queries`` and, when ``result`` has it (``per_query``),
    each query's AP (``ap``, NaN without a valid match). No valid query at all, or a CMC
    shorter than 10 ranks, is an error (prefixed with ``name``)."""
    if result["num_valid_queries"] == 0:
        raise InvalidValueError(
            f"{name + ': ' if name else ''}no query has a valid match in the gallery (same "
            "identity, other camera); check the query/gallery split"
        )
    cmc = result["cmc"]
    if len(cmc) < 10:  # a shorter curve would report rank-k < 10 under the name rank-10
        raise InvalidValueError(
            f"{name + ': ' if name else ''}rank_summary reports rank-1, -5 and -10; the CMC "
            f"has {len(cmc)} ranks (evaluate with max_rank >= 10)"
        )
    out = {f"rank{k}": float(cmc[k - 1]) for k in (1, 5, 10)}
    out.update(
        mAP=float(result["mAP"]),
        mINP=float(result["mINP"]),
        num_valid_queries=int(result["num_valid_queries"]),
        num_skipped_queries=int(result["num_skipped_queries"]),
    )
    if "ap" in result:
        out["ap"] = result["ap"]
    return out


def _evaluate_rank(
    distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int, chunk_size, per_query: bool
) -> Tuple[Dict[str, Any], _Problem]:
    """The :func:`evaluate_rank` result, and the prepared problem (for the single-gallery-shot
    CMC)."""
    p = _prepare(distmat, q_pids, g_pids, q_camids, g_camids)
    num_q, num_g = p.dist.shape
    dev = p.dist.device
    ap_sum = torch.zeros((), dtype=torch.float64, device=dev)
    inp_sum = torch.zeros((), dtype=torch.float64, device=dev)
    hist = torch.zeros(max_rank + 1, dtype=torch.int64, device=dev)
    ap_q = torch.zeros(num_q, dtype=torch.float64, device=dev) if per_query else None
    work: Dict[Any, torch.Tensor] = {}  # scratch buffers shared by the chunks
    for a, b in chunks(num_q, _chunk_rows(chunk_size, num_g)):
        rows, k, rank = _match_ranks(p, a, b, work)
        if rows.numel() == 0:
            continue
        n = p.n_match[a:b][rows]
        rank_f = rank.to(torch.float64)
        precision = k.to(torch.float64) / (rank_f + 1) / n.to(torch.float64)
        ap_sum += precision.sum()
        if ap_q is not None:
            ap_q.index_add_(0, rows + a, precision)
        last = k == n
        inp_sum += (n[last].to(torch.float64) / (rank_f[last] + 1)).sum()
        hist += torch.bincount(rank[k == 1].clamp(max=max_rank), minlength=max_rank + 1)
    num_valid = int((p.n_match > 0).sum())
    if num_valid == 0:
        raise InvalidValueError(
            "evaluate_rank: no query has a valid true match in the gallery (check that q_pids/g_pids "
            "share identities and that not every match is filtered out by q_camids/g_camids)"
        )
    cmc = torch.cumsum(hist[:max_rank], 0).to(torch.float64) / num_valid
    out = {
        "cmc": cmc.cpu().numpy(),
        "mAP": float(ap_sum) / num_valid,
        "mINP": float(inp_sum) / num_valid,
        "num_valid_queries": num_valid,
        "num_skipped_queries": num_q - num_valid,
    }
    if ap_q is not None:
        out["ap"] = torch.where(p.n_match > 0, ap_q, float("nan")).cpu().numpy()
    return out, p


def _single_gallery_shot_cmc(
    p: _Problem, max_rank: int, repeats: int, seed: int, num_valid: int
) -> np.ndarray:
    """The single-gallery-shot CMC (see :func:`evaluate_rank`) of a prepared problem."""
    num_q, num_g = p.dist.shape
    dev = p.dist.device
    n_ids = p.uniq_pids.numel()
    gen = torch.Generator().manual_seed(int(seed))
    # each query's true matches, compacted to the front of its row
    front = torch.argsort((~p.match).to(torch.int8), dim=1, stable=True)
    matches = p.same_id.gather(1, front)
    hist = torch.zeros(max_rank + 1, dtype=torch.int64, device=dev)
    rows_per_chunk = max(1, (1 << 22) // (repeats * n_ids))
    ids = torch.arange(n_ids, device=dev)
    for a, b in chunks(num_q, rows_per_chunk):
        c = b - a
        # random draws for every (query, round, identity) and for the query's own identity
        u = torch.rand((c, repeats, n_ids), generator=gen, dtype=torch.float64).to(dev)
        v = torch.rand((c, repeats), generator=gen, dtype=torch.float64).to(dev)
        valid = p.n_match[a:b] > 0
        member = (u * p.id_count).long().clamp_(max=p.id_count - 1)
        drawn = p.g_order[p.id_start + member]  # (c, repeats, n_ids)
        n = p.n_match[a:b].clamp(min=1).unsqueeze(1)
        pick = (v * n).long().clamp_(max=n - 1)
        m_idx = matches[a:b].gather(1, pick)  # (c, repeats) drawn true match
        dc = p.dist[a:b]
        d_drawn = dc.gather(1, drawn.view(c, -1)).view(c, repeats, n_ids)
        d_m = dc.gather(1, m_idx).unsqueeze(2)
        m_exp = m_idx.unsqueeze(2)
        closer = (d_drawn < d_m) | ((d_drawn == d_m) & (drawn < m_exp))
        other = ids.view(1, 1, -1) != p.q_id[a:b].view(-1, 1, 1)
        rank = (closer & other).sum(2)  # (c, repeats)
        hist += torch.bincount(rank[valid].reshape(-1).clamp(max=max_rank), minlength=max_rank + 1)
    cmc = torch.cumsum(hist[:max_rank], 0).to(torch.float64) / (num_valid * repeats)
    return cmc.cpu().numpy()
