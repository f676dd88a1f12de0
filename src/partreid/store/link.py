"""Site identities: which tracklets, across cameras and time, are one person.

:func:`link` groups tracklets (a feature, a camera and a time span each) into identities by
constrained agglomerative clustering on a sparse k-nearest-neighbour graph:

1. the graph: each tracklet's ``k`` nearest tracklets by cosine (exact blocks of numpy up to
   :data:`EXACT_MAX` tracklets, faiss ``IndexFlatIP`` up to :data:`FLAT_MAX`, a faiss
   ``IndexIVFFlat`` above: no all-pairs matrix is ever built, memory is ``O(N k)``);
2. average linkage on that graph: the distance of two identities is the mean ``2 - 2 cos``
   over their tracklet pairs, ``2 - 2 (S_a . S_b) / (n_a n_b)`` with ``S`` the sum of an
   identity's unit features; the closest pair of neighbouring identities is merged first, and
   merging stops when no neighbouring pair is closer than the threshold;
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
again changes nothing (every neighbouring pair was refused in its final form).

The threshold, when not given, comes from the tracklets themselves (:func:`choose_threshold`).
"""

from __future__ import annotations

import csv
import heapq
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from partreid.errors import InvalidValueError, NotFoundError
from partreid.utils.extras import require

EXACT_MAX = 4096  # tracklets: exact kNN in numpy blocks (no faiss needed)
FLAT_MAX = 20000  # tracklets: exact kNN with faiss IndexFlatIP; above, IndexIVFFlat
K = 10  # neighbours per tracklet in the graph
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
    """kNN with faiss: exact flat up to FLAT_MAX rows, an inverted file above (nprobe 16)."""
    faiss = require("faiss", "index")
    n, d = x.shape
    if n <= FLAT_MAX:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False)
        index.train(x[np.sort(sample)])
        index.nprobe = 16
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
    """Average-linkage merging of neighbouring clusters under the rules (see the module doc)."""

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
                self.sums[r] += t.features[i]
                self.count[r] += 1
                self.members[r].append(i)
                del self.members[i]
        for r in self.members:
            self.members[r] = time_order(self.members[r], t)
        self.version = np.zeros(n, np.int64)
        self.nbrs: Dict[int, set] = {r: set() for r in self.members}
        self.merges: List[Tuple[int, int]] = []
        self.refused = 0

    def distance(self, a: int, others: np.ndarray) -> np.ndarray:
        """Average-linkage distance of cluster ``a`` to the clusters ``others``."""
        dots = self.sums[others] @ self.sums[a]
        return np.maximum(2.0 - 2.0 * dots / (self.count[others] * self.count[a]), 0.0)

    def seed(self, idx: np.ndarray) -> List[Tuple[float, int, int, int, int]]:
        """The candidate pairs of the graph's edges between clusters, as heap entries."""
        src = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
        dst = idx.reshape(-1)
        ok = dst >= 0
        a, b = self.root[src[ok]], self.root[dst[ok]]
        pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], 1), axis=0)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        heap = []
        for c0 in range(0, pairs.shape[0], 65536):
            p = pairs[c0 : c0 + 65536]
            dots = np.einsum("ij,ij->i", self.sums[p[:, 0]], self.sums[p[:, 1]])
            d = np.maximum(2.0 - 2.0 * dots / (self.count[p[:, 0]] * self.count[p[:, 1]]), 0.0)
            for (x, y), dist in zip(p.tolist(), d.tolist()):
                self.nbrs[x].add(y)
                self.nbrs[y].add(x)
                if dist <= self.threshold:
                    heap.append((dist, x, y, 0, 0))
        heapq.heapify(heap)
        return heap

    def allowed(self, a: int, b: int) -> bool:
        """Whether the rules allow clusters ``a`` and ``b`` to be one identity."""
        ma, mb = self.members[a], self.members[b]
        if _overlap(ma, mb, self.t):
            return False
        return self.transitions is None or route_ok(
            time_order(ma + mb, self.t), self.t, self.transitions
        )

    def merge(self, a: int, b: int) -> int:
        """Merge clusters ``a`` and ``b``; returns the surviving cluster."""
        if self.count[b] > self.count[a]:
            a, b = b, a
        ia, ib = int(self.ident[a]), int(self.ident[b])
        if ia >= 0 and ib >= 0 and ia != ib:
            self.merges.append((max(ia, ib), min(ia, ib)))
        self.ident[a] = min(ia, ib) if ia >= 0 and ib >= 0 else max(ia, ib)
        self.sums[a] += self.sums[b]
        self.count[a] += self.count[b]
        self.members[a] = time_order(self.members[a] + self.members.pop(b), self.t)
        self.root[self.members[a]] = a
        self.version[a] += 1
        self.version[b] = -1
        for c in self.nbrs[b]:
            self.nbrs[c].discard(b)
            if c != a:
                self.nbrs[c].add(a)
        self.nbrs[a] = (self.nbrs[a] | self.nbrs.pop(b)) - {a, b}
        return a

    def run(self, heap: List[Tuple[float, int, int, int, int]]) -> None:
        """Merge the closest allowed pair until none is closer than the threshold."""
        version = self.version
        while heap:
            _, a, b, va, vb = heapq.heappop(heap)
            if version[a] != va or version[b] != vb:
                continue  # one of them changed since: its pairs were pushed again
            if not self.allowed(a, b):
                self.refused += 1
                continue
            c = self.merge(a, b)
            others = np.fromiter(self.nbrs[c], np.int64, len(self.nbrs[c]))
            if not others.shape[0]:
                continue
            d = self.distance(c, others)
            near = d <= self.threshold
            for o, dist in zip(others[near].tolist(), d[near].tolist()):
                x, y = (c, o) if c < o else (o, c)
                heapq.heappush(heap, (dist, x, y, int(version[x]), int(version[y])))

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


def choose_threshold(
    t: Tracklets, dist: np.ndarray, impostors: Optional[np.ndarray] = None
) -> Tuple[float, str]:
    """A threshold from the tracklets' own distances, and how it was chosen (see
    :data:`THRESHOLD_RULE`)."""
    raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Linking
# --------------------------------------------------------------------------------------------
def link(
    t: Tracklets,
    existing: Optional[np.ndarray] = None,
    threshold: Optional[float] = None,
    transitions: Optional[Transitions] = None,
    k: int = K,
    next_id: Optional[int] = None,
) -> LinkResult:
    """Identities of the tracklets ``t`` (see the module docstring): ``existing`` per tracklet
    its identity from an earlier run or -1; new identities are numbered from ``next_id``
    (default: one past the largest existing id, 1 when there is none)."""
    n = len(t)
    existing = np.full(n, -1, np.int64) if existing is None else np.asarray(existing, np.int64)
    if existing.shape != (n,):
        raise InvalidValueError(f"existing has shape {existing.shape}, expected ({n},)")
    if next_id is None:
        next_id = int(existing.max()) + 1 if n and existing.max() >= 0 else 1
    if int(k) < 1:
        raise InvalidValueError(f"k={k}: expected at least 1 neighbour")
    idx, dist = knn_graph(t.features, int(k))
    how = "given"
    if threshold is None:
        threshold, how = choose_threshold(t, dist)
    elif not 0.0 <= float(threshold) <= 4.0:
        raise InvalidValueError(f"threshold={threshold}: expected a distance 2 - 2 cos in [0, 4]")
    agg = _Agglomeration(t, existing, transitions, float(threshold))
    agg.run(agg.seed(idx))
    return LinkResult(agg.labels(int(next_id)), agg.merges, float(threshold), how, agg.refused)
