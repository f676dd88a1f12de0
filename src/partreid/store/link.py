"""Site identities: which tracklets, across cameras and time, are one person.

:func:`link` groups tracklets (a feature, a camera and a time span each) into identities by
constrained agglomerative clustering on a sparse k-nearest-neighbour graph:

1. the graph: edges between tracklets that may be one person.

   - The possible next steps of a route (:func:`adjacent_pairs`): a tracklet of the same
     camera starting within :data:`SAME_CAMERA_GAP` seconds after one ends (a track broken by
     an occlusion), and, with :class:`Transitions`, a tracklet of another camera starting
     within the window of that move; each tracklet's ``k`` nearest such steps.
   - Without transitions, also each tracklet's ``k`` nearest tracklets by cosine (exact blocks
     of numpy up to :data:`EXACT_MAX` tracklets, faiss ``IndexFlatIP`` up to
     :data:`FLAT_MAX`, a faiss ``IndexIVFFlat`` above -- approximate: a neighbour in an
     inverted list not searched is missed). With transitions the site's map says which steps
     a route can take, and only those are edges (on the synthetic site with the demo model:
     IDF1 0.68 with kNN edges too, 0.84 without).

   No all-pairs matrix is ever built; memory is ``O(N k)``;
2. average linkage along the edges: the distance of two identities is the mean ``2 - 2 cos``
   over their tracklet pairs, ``2 - 2 (S_a . S_b) / (n_a n_b)`` with ``S`` the sum of an
   identity's unit features. The edges are swept closest first; an edge merges the
   identities at its ends when their distance is within the threshold and the rules allow
   it; sweeps repeat until one merges nothing;
3. the rules: two identities are never merged when the result would hold two tracklets of one
   camera that overlap in time (closed intervals: a crop each in the same instant is two
   people), nor -- with :class:`Transitions` -- a move between two cameras (consecutive
   tracklets of the route in time order, in different cameras) whose gap ``next.start -
   previous.end`` is outside the ``[min_s, max_s]`` window of that pair of cameras, or whose
   pair has no window at all.

Incremental and stable: ``existing`` identities (from an earlier run) are the starting
clusters; new tracklets join one of them or make new ones (numbered from ``next_id`` in the
order of their first tracklet); two existing identities that the new evidence joins are merged
into the smaller id and the merge is reported, never renumbered silently. Linking the result
again changes nothing (the last sweep refused every edge between two identities).

The threshold, when not given, comes from the tracklets themselves (:func:`choose_threshold`):
Otsu's split of the kNN distances, or with transitions of each tracklet's distance to its
nearest possible next step.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from partreid.errors import InvalidValueError, NotFoundError
from partreid.store.base import CameraFilter, GalleryStore, TrackletTable
from partreid.utils.extras import load_faiss

EXACT_MAX = 4096  # tracklets: exact kNN in numpy blocks (no faiss needed)
FLAT_MAX = 10000  # tracklets: exact kNN with faiss IndexFlatIP; above, IndexIVFFlat
K = 10  # neighbours per tracklet in the graph
SAME_CAMERA_GAP = 10.0  # seconds: a track broken in one camera (occlusion) resumes within this
CENTER_MIN = 30  # tracklets a camera needs before its mean is taken out (center_cameras)
NPROBE = 8  # inverted lists searched per tracklet above FLAT_MAX (benchmarks/mtmc.py: recall)
_BLOCK = 2048
EPS = 1e-6  # distances within this of the threshold count as under it (float sums differ by order)


@dataclass
class Tracklets:
    """Tracklets to link, as parallel arrays: ``keys`` (tracklet ids), ``camera`` int64,
    ``start``/``end`` float64 seconds, ``features`` float32 (N, D), unit rows."""

    keys: List[str]
    camera: np.ndarray
    start: np.ndarray
    end: np.ndarray
    features: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.keys)
        self.camera = np.asarray(self.camera, np.int64).reshape(-1)
        self.start = np.asarray(self.start, np.float64).reshape(-1)
        self.end = np.asarray(self.end, np.float64).reshape(-1)
        f = np.asarray(self.features, np.float32)
        if f.ndim != 2 or f.shape[0] != n:
            raise InvalidValueError(f"Tracklets.features has shape {f.shape}, expected ({n}, dim)")
        for name in ("camera", "start", "end"):
            if getattr(self, name).shape[0] != n:
                raise InvalidValueError(f"Tracklets.{name} has the wrong length for {n} keys")
        norm = np.linalg.norm(f, axis=1, keepdims=True)
        self.features = (f / np.maximum(norm, 1e-12)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class Transitions:
    """Allowed moves between cameras: ``{(from, to): (min_s, max_s)}`` (a pair not listed is
    not allowed). ``gap`` is the next tracklet's start minus the previous one's end."""

    windows: Dict[Tuple[int, int], Tuple[float, float]]

    def allows(self, a: int, b: int, gap: float) -> bool:
        """Whether a person can be seen in camera ``a`` and then ``gap`` seconds later in ``b``."""
        w = self.windows.get((int(a), int(b)))
        return w is not None and w[0] <= gap <= w[1]


def read_transitions(path: str) -> Transitions:
    """A transitions CSV ``from_camera,to_camera,min_s,max_s`` (a header row, one move a row)."""
    if not os.path.isfile(path):
        raise NotFoundError(f"transitions file not found: {path}")
    want = ["from_camera", "to_camera", "min_s", "max_s"]
    windows: Dict[Tuple[int, int], Tuple[float, float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if [c.strip() for c in (reader.fieldnames or [])] != want:
            raise InvalidValueError(
                f"{path}: the header is {reader.fieldnames}, expected {','.join(want)}"
            )
        for line, row in enumerate(reader, start=2):
            try:
                a, b = int(row["from_camera"]), int(row["to_camera"])
                lo, hi = float(row["min_s"]), float(row["max_s"])
            except (TypeError, ValueError):
                raise InvalidValueError(
                    f"{path}, line {line}: expected two camera ids and two numbers of seconds,"
                    f" got {list(row.values())}"
                ) from None
            if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
                raise InvalidValueError(f"{path}, line {line}: min_s {lo} > max_s {hi}")
            windows[(a, b)] = (lo, hi)
    return Transitions(windows)


@dataclass
class LinkResult:
    """What :func:`link` decided: ``identity`` per tracklet, ``merges`` ``(absorbed, into)`` of
    existing identities, the ``threshold`` used and how it was chosen."""

    identity: np.ndarray
    merges: List[Tuple[int, int]] = field(default_factory=list)
    threshold: float = 0.0
    how: str = ""
    refused: int = 0  # merges the rules refused

    @property
    def identities(self) -> int:
        """The number of distinct identities."""
        return int(np.unique(self.identity).shape[0])


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------
def knn_graph(features: np.ndarray, k: int = K) -> Tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows by inner product: ``(index, distance)`` (N, k), the
    distance ``2 - 2 cos``; -1 where fewer exist. Memory O(N k), never N x N."""
    x = np.ascontiguousarray(features, np.float32)
    n = x.shape[0]
    kk = min(k + 1, n)
    if n == 0:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    if n <= EXACT_MAX:
        sims, idx = np.empty((n, kk), np.float32), np.empty((n, kk), np.int64)
        for b0 in range(0, n, _BLOCK):
            s = x[b0 : b0 + _BLOCK] @ x.T
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            sims[b0 : b0 + _BLOCK] = np.take_along_axis(s, part, 1)
            idx[b0 : b0 + _BLOCK] = part
    else:
        sims, idx = _faiss_knn(x, kk)
    return _drop_self(idx, sims, k)


def _faiss_knn(x: np.ndarray, kk: int) -> Tuple[np.ndarray, np.ndarray]:
    """kNN with faiss: exact flat up to FLAT_MAX rows; above, an inverted file of about
    ``3 sqrt(N)`` lists trained on a seeded sample, searched in the NPROBE nearest lists."""
    faiss = load_faiss(f"linking more than {EXACT_MAX} tracklets")
    n, d = x.shape
    if n <= FLAT_MAX:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(min(4096, 3 * np.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(n, min(n, 30 * nlist), replace=False)
        index.cp.min_points_per_centroid = 1  # no warning: 30 points a list are enough here
        index.train(x[np.sort(sample)])
        index.nprobe = NPROBE
    index.add(x)
    sims, idx = index.search(x, kk)
    return sims, idx.astype(np.int64)


def _drop_self(idx: np.ndarray, sims: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Sort each row by similarity (ties by index), drop the row itself, keep k."""
    n, kk = idx.shape
    bad = (idx < 0) | (idx == np.arange(n)[:, None])
    sims = np.where(bad, -np.inf, sims)
    idx = np.where(bad, np.iinfo(np.int64).max, idx)
    order = np.lexsort((idx, -sims), axis=1)
    idx, sims = np.take_along_axis(idx, order, 1)[:, :k], np.take_along_axis(sims, order, 1)[:, :k]
    out_i = np.full((n, k), -1, np.int64)
    out_d = np.full((n, k), np.inf, np.float32)
    ok = np.isfinite(sims)
    out_i[:, : idx.shape[1]] = np.where(ok, idx, -1)
    out_d[:, : idx.shape[1]] = np.where(ok, np.maximum(2.0 - 2.0 * sims, 0.0), np.inf)
    return out_i, out_d


def edge_list(
    src: np.ndarray, dst: np.ndarray, dist: np.ndarray, n: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Edges ``src[i] - dst[i]`` (-1: none) as unique pairs ``(a < b)`` sorted by distance
    (ties by the pair), each with its smallest distance."""
    src, dst = np.asarray(src, np.int64).reshape(-1), np.asarray(dst, np.int64).reshape(-1)
    d = np.asarray(dist, np.float64).reshape(-1)
    ok = (dst >= 0) & (src != dst)
    a, b, d = np.minimum(src, dst)[ok], np.maximum(src, dst)[ok], d[ok]
    order = np.lexsort((b, a, d))
    a, b, d = a[order], b[order], d[order]
    _, first = np.unique(a * n + b, return_index=True)  # (i, j) and (j, i): once
    first.sort()
    return np.stack([a[first], b[first]], 1), d[first]


def _windows(
    t: Tracklets, transitions: Optional[Transitions]
) -> Dict[Tuple[int, int], Tuple[float, float]]:
    """Which next steps a route can take: per camera pair the gap window; a camera to itself
    up to SAME_CAMERA_GAP seconds unless ``transitions`` says otherwise."""
    windows = {(c, c): (0.0, SAME_CAMERA_GAP) for c in np.unique(t.camera).tolist()}
    if transitions is not None:
        windows.update(transitions.windows)
    return windows


def adjacent_pairs(
    t: Tracklets, transitions: Optional[Transitions], k: int = K, chunk: int = 4096
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each tracklet's possible next steps ``(i, j, distance)``: ``j`` starts ``gap`` seconds
    after ``i`` ends with ``gap`` in the window of ``(camera i, camera j)`` (:func:`_windows`;
    in one camera also after it ends), the ``k`` nearest by appearance of each ``i``."""
    out: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    by_cam = {c: np.nonzero(t.camera == c)[0] for c in np.unique(t.camera).tolist()}
    for c in by_cam:
        by_cam[c] = by_cam[c][np.argsort(t.start[by_cam[c]], kind="stable")]
    for (ca, cb), (lo, hi) in sorted(_windows(t, transitions).items()):
        if ca not in by_cam or cb not in by_cam:
            continue
        rows_b = by_cam[cb]
        starts = t.start[rows_b]
        for c0 in range(0, len(by_cam[ca]), chunk):
            rows_a = by_cam[ca][c0 : c0 + chunk]
            left = np.searchsorted(starts, t.end[rows_a] + lo, side="left")
            right = np.searchsorted(starts, t.end[rows_a] + hi, side="right")
            counts = np.maximum(right - left, 0)
            if not counts.sum():
                continue
            src = np.repeat(rows_a, counts)
            dst = rows_b[
                np.repeat(left - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            ]
            if ca == cb:  # one camera: strictly after (a shared instant is two people)
                keep = t.start[dst] > t.end[src]
                src, dst = src[keep], dst[keep]
            d = 2.0 - 2.0 * np.einsum("ij,ij->i", t.features[src], t.features[dst])
            out.append(_nearest_per_row(src, dst, np.maximum(d, 0.0), k))
    if not out:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    return _nearest_per_row(*(np.concatenate(x) for x in zip(*out)), k)


def _nearest_per_row(
    src: np.ndarray, dst: np.ndarray, d: np.ndarray, k: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` smallest ``d`` of each ``src`` (ties by ``dst``)."""
    order = np.lexsort((dst, d, src))
    src, dst, d = src[order], dst[order], d[order]
    if not len(src):
        return src, dst, d
    first = np.r_[0, np.nonzero(np.diff(src))[0] + 1]
    rank = np.arange(len(src)) - np.repeat(first, np.diff(np.r_[first, len(src)]))
    keep = rank < k
    return src[keep], dst[keep], d[keep]


# --------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------
def _overlap(ia: Sequence[int], ib: Sequence[int], t: Tracklets) -> bool:
    """Whether a tracklet of ``ia`` and one of ``ib`` share a camera and an instant."""
    cams = {int(t.camera[i]) for i in ia} & {int(t.camera[j]) for j in ib}
    if not cams:
        return False
    for i in ia:
        if int(t.camera[i]) not in cams:
            continue
        for j in ib:
            if t.camera[j] == t.camera[i] and t.start[j] <= t.end[i] and t.start[i] <= t.end[j]:
                return True
    return False


def route_ok(members: Sequence[int], t: Tracklets, transitions: Optional[Transitions]) -> bool:
    """Whether every move of a route (``members`` in time order) is allowed by ``transitions``:
    consecutive tracklets in different cameras, gap ``next.start - previous.end``."""
    if transitions is None:
        return True
    for a, b in zip(members, members[1:]):
        if t.camera[a] != t.camera[b] and not transitions.allows(
            t.camera[a], t.camera[b], float(t.start[b] - t.end[a])
        ):
            return False
    return True


def time_order(members: Sequence[int], t: Tracklets) -> List[int]:
    """Tracklets in time order: by start, then end, then key."""
    return sorted(members, key=lambda i: (t.start[i], t.end[i], t.keys[i]))


def violations(
    t: Tracklets, identity: np.ndarray, transitions: Optional[Transitions] = None
) -> List[str]:
    """Every broken rule in an assignment, as text (empty when the rules hold)."""
    out = []
    groups: Dict[int, List[int]] = {}
    for i, ident in enumerate(np.asarray(identity).tolist()):
        groups.setdefault(int(ident), []).append(i)
    for ident, members in sorted(groups.items()):
        route = time_order(members, t)
        for x, a in enumerate(route):
            for b in route[x + 1 :]:
                if _overlap([a], [b], t):
                    out.append(f"identity {ident}: {t.keys[a]} and {t.keys[b]} overlap")
        if not route_ok(route, t, transitions):
            out.append(f"identity {ident}: a move outside the transitions")
    return out


# --------------------------------------------------------------------------------------------
# Agglomeration
# --------------------------------------------------------------------------------------------
class _Agglomeration:
    """Average-linkage merging of clusters joined by graph edges, under the rules (see the
    module docstring)."""

    def __init__(
        self,
        t: Tracklets,
        existing: np.ndarray,
        transitions: Optional[Transitions],
        threshold: float,
    ):
        self.t, self.transitions, self.threshold = t, transitions, float(threshold) + EPS
        n = len(t)
        self.root = np.arange(n)
        self.ident = np.where(existing >= 0, existing, -1).astype(np.int64)
        self.sums = t.features.astype(np.float64)  # sums in float64: merge order barely matters
        self.count = np.ones(n, np.int64)
        self.members: Dict[int, List[int]] = {i: [i] for i in range(n)}
        first: Dict[int, int] = {}
        for i in np.nonzero(existing >= 0)[0].tolist():  # an existing identity: one cluster
            r = first.setdefault(int(existing[i]), i)
            if r != i:
                self.root[i] = r
                self.sums[r] += self.sums[i]
                self.count[r] += 1
                self.members[r].append(i)
                del self.members[i]
        for r in first.values():
            self.members[r] = time_order(self.members[r], t)
        self.merges: List[Tuple[int, int]] = []
        self.refused = 0

    def allowed(self, a: int, b: int) -> bool:
        """Whether the rules allow clusters ``a`` and ``b`` to be one identity."""
        ma, mb = self.members[a], self.members[b]
        if _overlap(ma, mb, self.t):
            return False
        return self.transitions is None or route_ok(
            time_order(ma + mb, self.t), self.t, self.transitions
        )

    def merge(self, a: int, b: int) -> None:
        """Merge clusters ``a`` and ``b`` (into the larger one)."""
        if self.count[b] > self.count[a]:
            a, b = b, a
        ia, ib = int(self.ident[a]), int(self.ident[b])
        if ia >= 0 and ib >= 0 and ia != ib:
            self.merges.append((max(ia, ib), min(ia, ib)))
        self.ident[a] = min(ia, ib) if ia >= 0 and ib >= 0 else max(ia, ib)
        self.sums[a] += self.sums[b]
        self.count[a] += self.count[b]
        moved = self.members.pop(b)
        self.members[a] = time_order(self.members[a] + moved, self.t)
        self.root[moved] = a

    def _distances(self, ra: np.ndarray, rb: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Average-linkage distances of the clusters ``ra`` and ``rb`` (``d``: the edge's, the
        answer for two single tracklets)."""
        multi = (self.count[ra] > 1) | (self.count[rb] > 1)
        out = d.copy()
        if multi.any():
            x, y = ra[multi], rb[multi]
            dots = np.einsum("ij,ij->i", self.sums[x], self.sums[y])
            out[multi] = 2.0 - 2.0 * dots / (self.count[x] * self.count[y])
        return out

    def sweep(self, edges: np.ndarray, dist: np.ndarray, chunk: int = 8192) -> int:
        """One pass over the edges (closest first): merge the two clusters of an edge when
        their average-linkage distance is within the threshold and the rules allow it;
        returns the number of merges. Distances are computed a chunk at a time and again for
        an edge whose cluster changed within the chunk."""
        thr, merged = self.threshold, 0
        for c0 in range(0, edges.shape[0], chunk):
            e, d = edges[c0 : c0 + chunk], dist[c0 : c0 + chunk]
            ra, rb = self.root[e[:, 0]], self.root[e[:, 1]]
            live = ra != rb
            ra, rb, e, d = ra[live], rb[live], e[live], d[live]
            dd = self._distances(ra, rb, d)
            changed: set = set()
            rows = zip(e.tolist(), ra.tolist(), rb.tolist(), dd.tolist(), d.tolist())
            for (i, j), x, y, dist_ab, edge in rows:
                if x in changed or y in changed:  # merged within this chunk: ask again
                    x, y = int(self.root[i]), int(self.root[j])
                    if x == y:
                        continue
                    pair = np.array([x]), np.array([y]), np.array([edge])
                    dist_ab = float(self._distances(*pair)[0])
                if dist_ab > thr:
                    continue
                if not self.allowed(x, y):
                    self.refused += 1
                    continue
                changed.update((x, y))
                self.merge(x, y)
                merged += 1
        return merged

    def run(self, pairs: np.ndarray, dist: np.ndarray, max_passes: int = 100) -> None:
        """Sweep the edges (:func:`edge_list`) until a pass merges nothing: then linking the
        result again changes nothing."""
        for _ in range(max_passes):
            if not self.sweep(pairs, dist):
                break

    def labels(self, next_id: int) -> np.ndarray:
        """Identity per tracklet: existing ids kept, new clusters numbered from ``next_id`` by
        their first tracklet (time, then key)."""
        new = [r for r in self.members if self.ident[r] < 0]
        t = self.t
        new.sort(key=lambda r: (t.start[self.members[r][0]], t.keys[self.members[r][0]]))
        for j, r in enumerate(new):
            self.ident[r] = next_id + j
        return self.ident[self.root]


# --------------------------------------------------------------------------------------------
# The threshold
# --------------------------------------------------------------------------------------------
def impostor_pairs(t: Tracklets, limit: int = 100000, seed: int = 0) -> np.ndarray:
    """Pairs ``(i, j)`` of tracklets known to be two people: one camera, overlapping spans
    (at most ``limit``, a seeded sample when there are more)."""
    out = []
    for cam in np.unique(t.camera).tolist():
        rows = np.nonzero(t.camera == cam)[0]
        rows = rows[np.lexsort((t.end[rows], t.start[rows]))]
        s, e = t.start[rows], t.end[rows]
        hi = np.searchsorted(s, e, side="right")  # rows after i that start before i ends
        reach = hi - np.arange(len(rows)) - 1
        if not reach.sum():
            continue
        i = np.repeat(np.arange(len(rows)), reach)
        j = i + 1 + (np.arange(len(i)) - np.repeat(np.cumsum(reach) - reach, reach))
        out.append(np.stack([rows[i], rows[j]], 1))
    pairs = np.concatenate(out) if out else np.zeros((0, 2), np.int64)
    if pairs.shape[0] > limit:
        pick = np.random.default_rng(seed).choice(pairs.shape[0], limit, replace=False)
        pairs = pairs[np.sort(pick)]
    return pairs


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's split of ``values`` (finite ones): the cut of a ``bins``-bin histogram that
    maximises the variance between the two sides (the middle one where several do: two
    modes with empty bins between them are cut half way)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.shape[0] < 2 or v.min() == v.max():
        return float(v.max()) if v.shape[0] else 0.0
    hist, edges = np.histogram(v, bins=bins)
    mid = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * mid)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (w0 * w1 * (m0 / w0 - (m0[-1] - m0) / w1) ** 2)[:-1]
    best = np.nonzero(between >= np.nanmax(between) * (1 - 1e-9))[0]
    return float(edges[1:][int(best[len(best) // 2])])  # the middle of a gap between modes


THRESHOLD_RULE = (
    "Otsu's split of the distances of every tracklet to its k nearest neighbours (matches of"
    " the same person near 0, other people far)"
)
THRESHOLD_RULE_ROUTES = (
    "Otsu's split of the distances of every tracklet to its nearest possible next step (most"
    " tracklets' is the same person a little later, a route's end has none near)"
)


def choose_threshold(
    t: Tracklets, dist: np.ndarray, rule: str = THRESHOLD_RULE
) -> Tuple[float, str]:
    """A threshold from the tracklets' own distances ``dist`` (kNN distances, or each
    tracklet's nearest next step: see the rules), and a sentence saying how it was chosen."""
    d = np.asarray(dist, np.float64)
    d = d[np.isfinite(d)]
    if d.shape[0] < 2:
        return 0.0, "no neighbours to learn a threshold from: 0 (nothing is linked)"
    thr = otsu(d)
    imp = impostor_pairs(t, limit=20000)
    note = ""
    if imp.shape[0]:
        di = 2.0 - 2.0 * np.einsum("ij,ij->i", t.features[imp[:, 0]], t.features[imp[:, 1]])
        note = (
            f"; {100.0 * float(np.mean(di <= thr)):.1f}% of {imp.shape[0]} pairs known to be two"
            " people (one camera, same time) are within it"
        )
    return thr, f"{rule}: {thr:.3f}{note}"


# --------------------------------------------------------------------------------------------
# Linking
# --------------------------------------------------------------------------------------------
def center_cameras(t: Tracklets, min_tracklets: int = CENTER_MIN) -> Tracklets:
    """The tracklets with each camera's mean feature taken out of its tracklets' features
    (then unit length again), for every camera with at least ``min_tracklets`` tracklets.

    A camera's colour cast, light and viewpoint push all its people's features one way; the
    mean of many different people there is that push, and without it the same person in two
    cameras comes closer (on the synthetic site with the demo model: the median distance of
    the same person in two cameras 0.515 -> 0.459, IDF1 0.635 -> 0.693, benchmarks/mtmc.py).
    """
    f = t.features.astype(np.float64)
    for cam in np.unique(t.camera).tolist():
        rows = np.nonzero(t.camera == cam)[0]
        if rows.shape[0] >= min_tracklets:
            f[rows] -= f[rows].mean(0)
    return Tracklets(t.keys, t.camera, t.start, t.end, f.astype(np.float32))


def link(
    t: Tracklets,
    existing: Optional[np.ndarray] = None,
    threshold: Optional[float] = None,
    transitions: Optional[Transitions] = None,
    k: int = K,
    next_id: Optional[int] = None,
    center: bool = False,
) -> LinkResult:
    """Identities of the tracklets ``t`` (see the module docstring): ``existing`` per tracklet
    its identity from an earlier run or -1; new identities are numbered from ``next_id``
    (default: one past the largest existing id, 1 when there is none); with ``center``, the
    features are :func:`center_cameras`' first."""
    if center:
        t = center_cameras(t)
    n = len(t)
    existing = np.full(n, -1, np.int64) if existing is None else np.asarray(existing, np.int64)
    if existing.shape != (n,):
        raise InvalidValueError(f"existing has shape {existing.shape}, expected ({n},)")
    if next_id is None:
        next_id = int(existing.max()) + 1 if n and existing.max() >= 0 else 1
    if int(k) < 1:
        raise InvalidValueError(f"k={k}: expected at least 1 neighbour")
    src, dst, d = adjacent_pairs(t, transitions, int(k))
    if transitions is None:  # appearance decides across cameras: the kNN graph's edges too
        idx, dist = knn_graph(t.features, int(k))
        src = np.concatenate([src, np.repeat(np.arange(n), idx.shape[1])])
        dst, d = np.concatenate([dst, idx.reshape(-1)]), np.concatenate([d, dist.reshape(-1)])
        rule, sample = THRESHOLD_RULE, dist
    else:  # the site's map decides which steps a route can take: only those are edges
        nearest = np.full(n, np.inf)
        np.minimum.at(nearest, src, d)
        rule, sample = THRESHOLD_RULE_ROUTES, nearest
    how = "given"
    if threshold is None:
        threshold, how = choose_threshold(t, sample, rule)
    elif not 0.0 <= float(threshold) <= 4.0:
        raise InvalidValueError(f"threshold={threshold}: expected a distance 2 - 2 cos in [0, 4]")
    agg = _Agglomeration(t, existing, transitions, float(threshold))
    agg.run(*edge_list(src, dst, d, n))
    return LinkResult(agg.labels(int(next_id)), agg.merges, float(threshold), how, agg.refused)


# --------------------------------------------------------------------------------------------
# Linking a store
# --------------------------------------------------------------------------------------------
@dataclass
class LinkReport:
    """What :func:`link_store` did: tracklets in scope (``tracklets``), those given an identity
    or a new one (``changed``), identities in scope after, new ones, merges ``(absorbed,
    into)``, the threshold and how it was chosen, merges the rules refused, seconds."""

    tracklets: int
    changed: int
    identities: int
    new_identities: int
    merges: List[Tuple[int, int]]
    threshold: float
    threshold_how: str
    refused: int
    seconds: float

    def to_dict(self) -> Dict[str, object]:
        """The report as JSON-ready values (every field, in order; merges as lists, rounded)."""
        d = asdict(self)  # updating a key keeps its place
        d.update(
            merges=[list(m) for m in self.merges],
            threshold=round(self.threshold, 6),
            seconds=round(self.seconds, 3),
        )
        return d


def _union(a: TrackletTable, b: TrackletTable) -> TrackletTable:
    """The tracklets of both tables (each once), in time order."""
    seen = set(a.keys)
    extra = [i for i, k in enumerate(b.keys) if k not in seen]
    rows = [
        (
            tb.keys[i],
            tb.camera[i],
            tb.track_id[i],
            tb.start[i],
            tb.end[i],
            tb.n_crops[i],
            tb.identity[i],
        )
        for tb, idx in ((a, range(len(a))), (b, extra))
        for i in idx
    ]
    assert a.features is not None and b.features is not None
    return TrackletTable.of_rows(rows, np.concatenate([a.features, b.features[extra]]))


def link_store(
    store: GalleryStore,
    cameras: Optional[CameraFilter] = None,
    after: Optional[float] = None,
    before: Optional[float] = None,
    transitions: Optional[Transitions] = None,
    threshold: Optional[float] = None,
    k: int = K,
    center: bool = True,
) -> LinkReport:
    """Link the store's tracklets matching the filters (as a tracklet search's) and keep the
    identities in the store. The identities the scope already holds come with all their
    tracklets (in scope or not), so the rules see whole routes and none is split. ``center``:
    :func:`center_cameras` first."""
    t0 = time.time()
    table = store.tracklets(cameras, after, before, features=True)
    known = sorted(set(table.identity[table.identity >= 0].tolist()))
    scoped = cameras is not None or after is not None or before is not None
    if known and scoped:  # the whole store needs no second look
        table = _union(table, store.tracklets(identities=known, features=True))
    assert table.features is not None
    t = Tracklets(table.keys, table.camera, table.start, table.end, table.features)
    log = store.identity_log()
    top = int(table.identity.max()) + 1 if len(table) else 1
    result = link(t, table.identity, threshold, transitions, k, max(log.next_id, top), center)
    changed = {
        key: int(new)
        for key, new, old in zip(table.keys, result.identity.tolist(), table.identity.tolist())
        if new != old
    }
    fresh = set(result.identity.tolist()) - set(known)
    if changed or result.merges:
        next_id = max([log.next_id, top] + [i + 1 for i in result.identity.tolist()])
        store.set_identities(changed, result.merges, next_id=next_id, at=time.time())
    return LinkReport(
        tracklets=len(table),
        changed=len(changed),
        identities=result.identities,
        new_identities=len(fresh),
        merges=result.merges,
        threshold=result.threshold,
        threshold_how=result.how,
        refused=result.refused,
        seconds=time.time() - t0,
    )
