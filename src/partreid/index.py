"""Gallery indexes: the top-K gallery rows nearest to each query, exact or approximate.

    index = GalleryIndex.build(Features.load("gallery.npz"))        # exact; faiss when installed
    index = GalleryIndex.build(feats, kind="ivfpq", nprobe=32)      # approximate, large galleries
    dist, idx = index.search(query_features, topk=10)               # (M, K) float32 / int64
    index.save("gallery.index"); index = GalleryIndex.load("gallery.index")

Distances are the metric's true values (Euclidean, not squared; cosine distance ``1 - cos``) in
ascending order, ties broken by gallery row; rows a search could not fill hold ``(inf, -1)``.
The metric defaults to the one the features were made for (the features file's
``meta.distance`` / ``meta.normalize``, i.e. the training config's ``eval`` section), so an
exact search ranks the gallery exactly as ``partreid eval`` does.

Backends: ``faiss`` (exact = brute force with ``faiss.knn``; approximate kinds are faiss indexes,
moved to the GPU when faiss has GPUs and torch sees CUDA) and ``torch`` (exact only: blocked
matrix products with a running top-K, memory bounded, on CUDA when available).  Approximate
kinds return a *shortlist* (``refine`` x K candidates) whose exact distances are then computed
from the stored vectors, so their distances are exact and only the membership is approximate:

- ``ivfpq``: optional PCA (``pca`` dims), an inverted file of ``nlist`` k-means cells, residuals
  product-quantised to ``m`` bytes; ``nprobe`` cells are scanned per query.
- ``ivfflat``: the same without the quantisation (PCA-reduced vectors kept as float32).
- ``hnsw``: an HNSW graph (``hnsw_m`` links, ``ef_construction``, ``ef_search``), optional PCA.

Training uses a sample (``train_size`` rows); vectors are added in chunks, so building never
needs a second full copy of the gallery.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple

import numpy as np
import torch

from .errors import MissingExtraError, NotFoundError, PartreidError
from .features import Features, FeaturesFileError
from .metrics import re_rank_features
from .metrics.distance import METRICS, merge_topk_stable, squared_euclidean, topk_smallest_stable
from .utils.extras import FAISS_HINT, load_faiss

log = logging.getLogger("partreid")

INDEX_FORMAT = "partreid-index/1"
KINDS = ("exact", "ivfpq", "ivfflat", "hnsw")
BACKENDS = ("auto", "faiss", "torch")
_BLOCK_BYTES = 1 << 27  # memory for one block of distances or gathered gallery rows (128 MiB)
_REFINE_BYTES = 1 << 23  # gathered gallery rows per refinement step (8 MiB)
_ADD_CHUNK = 65536  # rows per faiss add() call

# parameters each kind accepts (defaults filled by default_params)
_PARAMS = {
    "exact": (),
    "ivfpq": ("pca", "nlist", "nprobe", "m", "nbits", "refine", "train_size", "seed"),
    "ivfflat": ("pca", "nlist", "nprobe", "refine", "train_size", "seed"),
    "hnsw": ("pca", "hnsw_m", "ef_construction", "ef_search", "refine", "train_size", "seed"),
}
_SEARCH_PARAMS = ("nprobe", "ef_search", "refine")


class GalleryIndexError(PartreidError, ValueError):
    """A gallery index that cannot be built, read or searched as asked."""


# ============================================================================ helpers
def faiss_available() -> bool:
    """Whether ``import faiss`` works."""
    return load_faiss() is not None


def _faiss(what: str):
    """faiss, or a GalleryIndexError saying that ``what`` needs it."""
    try:
        return load_faiss(what)
    except MissingExtraError as e:
        raise GalleryIndexError(str(e)) from None


def _faiss_gpu(faiss) -> bool:
    """faiss was built with GPUs, has one, and torch sees CUDA."""
    try:
        return (
            hasattr(faiss, "StandardGpuResources")
            and faiss.get_num_gpus() > 0
            and torch.cuda.is_available()
        )
    except Exception:  # pragma: no cover - broken GPU runtime
        return False


def _largest_divisor(n: int, at_most: int) -> int:
    for m in range(max(1, min(n, at_most)), 0, -1):
        if n % m == 0:
            return m
    return 1


def default_params(kind: str, n: int, dim: int, **given: Any) -> Dict[str, Any]:
    """The parameters of ``kind`` for ``n`` vectors of dimension ``dim`` (``given`` overrides).

    IVF: ``nlist`` ~ 4 sqrt(n) (a power of two, at least 39 training points per cell),
    ``nprobe`` ~ 4 sqrt(nlist) (measured on galleries with the spectrum of real features:
    recall@10 0.957 at 100k with 128 of 1,024 cells, 0.959 at 1M with 256 of 4,096); PCA to 256 dims when ``dim`` > 512 (Re-ID features are highly
    correlated; the exact refinement restores the full-dimensional order); PQ ``m`` bytes with
    sub-vectors of at least 8 dims (32 bytes at 256 dims: faiss trains one k-means per byte,
    which dominates the build); shortlist ``refine`` = 10 x K.  For 1M x 3,072-d galleries
    ``ivfflat`` (PCA-256, IVF, exact refinement) is the measured choice, see
    benchmarks/search_speed.py.
    """
    if kind not in KINDS:
        raise GalleryIndexError(f"index kind: expected one of {KINDS}, got {kind!r}")
    unknown = sorted(set(given) - set(_PARAMS[kind]))
    if unknown:
        raise GalleryIndexError(
            f"unknown parameter(s) {unknown} for a {kind!r} index; valid: {list(_PARAMS[kind])}"
        )
    if kind == "exact":
        return {}
    p: Dict[str, Any] = {"refine": 10, "seed": 0}
    pca = given.get("pca")
    if pca is None:
        pca = 256 if dim > 512 else 0
    pca = int(pca)
    if pca < 0 or pca >= dim:
        pca = 0
    p["pca"] = pca
    d = pca or dim
    if kind in ("ivfpq", "ivfflat"):
        nlist = given.get("nlist")
        if nlist is None:
            nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
            nlist = max(1, min(nlist, n // 39))
        p["nlist"] = int(nlist)
        nprobe = given.get("nprobe")
        if not nprobe:  # 4 sqrt(nlist): recall@10 >= 0.95 at 100k and 1M (search_speed.py)
            nprobe = min(p["nlist"], 2 ** round(math.log2(4 * math.sqrt(p["nlist"]))))
        p["nprobe"] = int(nprobe)
        p["train_size"] = int(
            given.get("train_size") or min(n, max(40 * p["nlist"], 20000), 200000)
        )
    if kind == "ivfpq":
        p["m"] = int(given.get("m") or _largest_divisor(d, min(64, d // 8 or 1)))
        nbits = given.get("nbits")
        if nbits is None:  # 2**nbits centroids need ~39 training points each
            nbits = max(1, min(8, int(math.log2(max(2, min(n, p["train_size"]) // 39)))))
        p["nbits"] = int(nbits)
        if d % p["m"]:
            raise GalleryIndexError(f"ivfpq: m={p['m']} must divide the dimension {d}")
    if kind == "hnsw":
        p["hnsw_m"] = int(given.get("hnsw_m") or 32)
        p["ef_construction"] = int(given.get("ef_construction") or 80)
        p["ef_search"] = int(given.get("ef_search") or 128)
        p["train_size"] = int(given.get("train_size") or min(n, 50000))
    for k in ("refine", "seed", "train_size"):
        if given.get(k) is not None:
            p[k] = int(given[k])
    for k in ("nlist", "nprobe", "m", "nbits", "refine", "hnsw_m", "ef_construction", "ef_search"):
        if k in p and p[k] < 1:
            raise GalleryIndexError(f"{kind}: {k} must be at least 1, got {p[k]}")
    if p.get("nbits", 8) > 16:
        raise GalleryIndexError(f"ivfpq: nbits must be at most 16, got {p['nbits']}")
    return p


def factory_string(kind: str, dim: int, params: Dict[str, Any]) -> str:
    """The faiss ``index_factory`` description of ``kind`` with ``params``."""
    pre = f"PCA{params['pca']}," if params.get("pca") else ""
    if kind == "ivfpq":
        return f"{pre}IVF{params['nlist']},PQ{params['m']}x{params['nbits']}"
    if kind == "ivfflat":
        return f"{pre}IVF{params['nlist']},Flat"
    if kind == "hnsw":
        return f"{pre}HNSW{params['hnsw_m']},Flat"
    raise GalleryIndexError(f"no faiss index for kind {kind!r}")


def _row_chunks(n: int, size: int) -> Iterator[Tuple[int, int]]:
    for a in range(0, n, size):
        yield a, min(n, a + size)


def search_space(x: np.ndarray, metric: str, normalize: bool) -> np.ndarray:
    """Vectors as the metric compares them: float32, L2-normalised for cosine or ``normalize``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine" or normalize:
        t = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
        x = t.numpy()
    return x


def train_faiss_index(kind: str, dim: int, params: Dict[str, Any], sample: np.ndarray):
    """A trained (empty) CPU faiss index for ``kind``, trained on ``sample`` (float32, search space)."""
    faiss = _faiss(f"a {kind!r} index")
    index = faiss.index_factory(dim, factory_string(kind, dim, params), faiss.METRIC_L2)
    if kind == "hnsw":
        inner = faiss.downcast_index(
            index.index if isinstance(index, faiss.IndexPreTransform) else index
        )
        inner.hnsw.efConstruction = int(params["ef_construction"])
    if kind in ("ivfpq", "ivfflat"):
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.seed = int(params.get("seed", 0))
        if kind == "ivfpq":
            ivf.pq.cp.seed = int(params.get("seed", 0))
            ivf.use_precomputed_table = 0 if params.get("pca") else -1
    if not index.is_trained:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def add_in_chunks(index, chunks: Iterable[np.ndarray]) -> None:
    """Add the vectors of ``chunks`` (float32, search space) to a trained faiss index."""
    for c in chunks:
        index.add(np.ascontiguousarray(c, dtype=np.float32))


def set_search_params(index, kind: str, params: Dict[str, Any]) -> None:
    """Apply ``nprobe`` / ``ef_search`` to a faiss index (CPU or GPU)."""
    faiss = _faiss("searching")
    pairs = []
    if kind in ("ivfpq", "ivfflat"):
        pairs.append(("nprobe", int(params["nprobe"])))
    if kind == "hnsw":
        pairs.append(("efSearch", int(params["ef_search"])))
    if not pairs:
        return
    space = (
        faiss.GpuParameterSpace()
        if hasattr(faiss, "GpuParameterSpace") and "Gpu" in type(index).__name__
        else faiss.ParameterSpace()
    )
    for name, value in pairs:
        space.set_index_parameter(index, name, value)


def _sort_pairs(vals: torch.Tensor, idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each row ordered by (value, index)."""
    idx, perm = idx.sort(dim=1)
    vals = vals.gather(1, perm)
    vals, perm = vals.sort(dim=1, stable=True)
    return vals, idx.gather(1, perm)


def _distance_values(
    dots: torch.Tensor, q_sq: Optional[torch.Tensor], g_sq: Optional[torch.Tensor], metric: str
) -> torch.Tensor:
    """Distances from dot products, in the order of operations of ``compute_distance``."""
    if metric == "cosine":
        return dots.mul_(-1.0).add_(1.0)
    d = dots.mul_(-2.0).add_(g_sq).add_(q_sq.unsqueeze(1))
    return d.clamp_(min=0).sqrt_()


def exact_knn(
    vectors: np.ndarray,
    queries: torch.Tensor,
    k: int,
    metric: str,
    g_sq: Optional[torch.Tensor] = None,
    device: torch.device | str = "cpu",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Brute-force top-``k`` by blocked matrix products with a running top-k (torch).

    ``vectors`` are the gallery in search space (any float dtype; each block is computed in
    float32 on ``device``), ``queries`` float32 in search space.  Distances are those of
    ``partreid.metrics.compute_distance`` and ties go to the smaller row, so the result equals
    a stable sort of the full distance matrix.  Memory: about 128 MiB of blocks.
    """
    device = torch.device(device)
    n, dim = vectors.shape
    k = min(k, n)
    q = queries.to(device)
    m = q.shape[0]
    rows = int(max(1024, min(65536, _BLOCK_BYTES // (4 * max(1, dim)))))
    qrows = int(max(1, _BLOCK_BYTES // (4 * rows)))
    out_v = torch.empty((m, k), dtype=torch.float32)
    out_i = torch.empty((m, k), dtype=torch.int64)
    q_sq_all = q.pow(2).sum(1)
    best = [None] * len(range(0, m, qrows))
    for a, b in _row_chunks(n, rows):
        g = torch.as_tensor(np.asarray(vectors[a:b])).to(device=device, dtype=torch.float32)
        if metric == "cosine":
            gs = None
        else:
            gs = g_sq[a:b].to(device) if g_sq is not None else g.pow(2).sum(1)
        for j, (qa, qb) in enumerate(_row_chunks(m, qrows)):
            if metric == "cosine":
                d = torch.addmm(
                    torch.ones((), device=device), q[qa:qb], g.t(), beta=1.0, alpha=-1.0
                )
            else:
                d = squared_euclidean(q[qa:qb], g, q_sq_all[qa:qb], gs).sqrt_()
            v, i = topk_smallest_stable(d, min(k, b - a))
            i = i + a
            best[j] = (v, i) if best[j] is None else merge_topk_stable(*best[j], v, i, k)
    for j, (qa, qb) in enumerate(_row_chunks(m, qrows)):
        out_v[qa:qb], out_i[qa:qb] = best[j][0].cpu(), best[j][1].cpu()
    return out_v, out_i


def pair_distances(
    vectors: np.ndarray,
    queries: torch.Tensor,
    cand: torch.Tensor,
    metric: str,
    g_sq: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Exact distances between each query and its candidate rows ``cand`` (M, S); inf where -1."""
    m, s = cand.shape
    n, dim = vectors.shape
    out = torch.full((m, s), float("inf"), dtype=torch.float32)
    if m == 0 or s == 0:
        return out
    # a few queries per step: their gathered rows stay in cache (one 128 MiB step of 64
    # queries measured 5x slower per query than single queries)
    step = int(max(1, _REFINE_BYTES // (4 * s * max(1, dim))))
    q_cpu = queries.detach().cpu().float()
    for a, b in _row_chunks(m, step):
        c = cand[a:b]
        valid = c >= 0
        safe = torch.where(valid, c, torch.zeros_like(c))
        flat = safe.reshape(-1).numpy()
        g = torch.as_tensor(np.asarray(vectors[flat])).float().reshape(b - a, s, dim)
        q = q_cpu[a:b]
        dots = torch.bmm(g, q.unsqueeze(2)).squeeze(2)
        if metric == "cosine":
            d = _distance_values(dots, None, None, metric)
        else:
            gs = g_sq[safe] if g_sq is not None else g.pow(2).sum(2)
            d = _distance_values(dots, q.pow(2).sum(1), gs, metric)
        out[a:b] = torch.where(valid, d, torch.full_like(d, float("inf")))
    return out


def refine(
    vectors: np.ndarray,
    queries: torch.Tensor,
    cand: torch.Tensor,
    k: int,
    metric: str,
    g_sq: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of each query's candidates by exact distance, ordered by (distance, row)."""
    n = vectors.shape[0]
    d = pair_distances(vectors, queries, cand, metric, g_sq)
    idx = torch.where(cand >= 0, cand, torch.full_like(cand, n))  # empties sort last
    d, idx = _sort_pairs(d, idx)
    d, idx = d[:, :k], idx[:, :k]
    idx = torch.where(idx >= n, torch.full_like(idx, -1), idx)
    if d.shape[1] < k:  # fewer candidates than k
        pad = k - d.shape[1]
        d = torch.cat([d, torch.full((d.shape[0], pad), float("inf"))], 1)
        idx = torch.cat([idx, torch.full((idx.shape[0], pad), -1, dtype=torch.int64)], 1)
    return d, idx


def approximate_search(
    index,
    kind: str,
    vectors: np.ndarray,
    queries: torch.Tensor,
    k: int,
    metric: str,
    params: Dict[str, Any],
    g_sq: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A faiss shortlist of ``refine`` x ``k`` rows per query, re-ordered by exact distances
    computed from ``vectors`` (the gallery in search space, any float dtype)."""
    set_search_params(index, kind, params)
    s = min(len(vectors), max(k, k * int(params.get("refine", 10))))
    _, cand = index.search(np.ascontiguousarray(queries.numpy(), dtype=np.float32), s)
    return refine(vectors, queries, torch.from_numpy(cand).long(), k, metric, g_sq)


# ============================================================================ the index
class GalleryIndex:
    """A searchable gallery: its :class:`Features` rows, the metric and a nearest-neighbour index."""

    def __init__(
        self,
        features: Features,
        metric: str,
        normalize: bool,
        kind: str,
        backend: str,
        params: Dict[str, Any],
        faiss_index: Any = None,
        device: str = "auto",
    ):
        self.features = features
        self.metric = metric
        self.normalize = bool(normalize)
        self.kind = kind
        self.backend = backend
        self.params = dict(params)
        self._vectors = search_space(features.features, metric, normalize)
        # squared norms once (Euclidean); the torch path ranks with them like compute_distance
        self._g_sq = None if metric == "cosine" else torch.from_numpy(self._vectors).pow(2).sum(1)
        self._faiss_cpu = faiss_index
        self._faiss = faiss_index
        self.device = self._pick_device(device)
        self._gpu_res = None
        if faiss_index is not None and self.device.type == "cuda":
            self._to_gpu()

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        feats: Features,
        kind: str = "exact",
        backend: str = "auto",
        metric: Optional[str] = None,
        normalize: Optional[bool] = None,
        device: str = "auto",
        **params: Any,
    ) -> GalleryIndex:
        """Index ``feats``; ``metric``/``normalize`` default to the features file's meta.

        ``backend``: ``auto`` = faiss when installed, else torch (exact only); approximate
        kinds need faiss.  ``params``: see :func:`default_params`.
        """
        if not isinstance(feats, Features):
            raise GalleryIndexError(f"expected a Features object, got {type(feats).__name__}")
        if len(feats) == 0:
            raise GalleryIndexError("the gallery is empty: nothing to index")
        if not np.isfinite(feats.features).all():
            bad = int((~np.isfinite(feats.features).all(1)).sum())
            raise GalleryIndexError(f"the gallery has {bad} feature rows with NaN or inf values")
        metric, normalize = resolve_metric(feats.meta, metric, normalize)
        if backend not in BACKENDS:
            raise GalleryIndexError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        p = default_params(kind, len(feats), feats.dim, **params)
        if backend == "auto":
            backend = "faiss" if faiss_available() else "torch"
            if backend == "torch" and kind != "exact":
                raise GalleryIndexError(
                    f"a {kind!r} index needs faiss, which is not installed: {FAISS_HINT}; "
                    "or use --kind exact (plain torch)"
                )
        if backend == "faiss":
            _faiss(f"the faiss backend ({kind!r} index)")
        if backend == "torch" and kind != "exact":
            raise GalleryIndexError(
                f"the torch backend only does exact search; a {kind!r} index needs faiss"
            )
        faiss_index = None
        if kind != "exact":
            vec = search_space(feats.features, metric, normalize)
            n = len(vec)
            rng = np.random.default_rng(p["seed"])
            take = min(n, p["train_size"])
            sample = vec if take >= n else vec[np.sort(rng.choice(n, take, replace=False))]
            faiss_index = train_faiss_index(kind, feats.dim, p, sample)
            del sample
            add_in_chunks(faiss_index, (vec[a:b] for a, b in _row_chunks(n, _ADD_CHUNK)))
            del vec
        out = cls(feats, metric, normalize, kind, backend, p, faiss_index, device)
        log.info(
            "indexed %d gallery features (%d-d): %s on %s, metric %s%s",
            len(feats),
            feats.dim,
            kind if kind == "exact" else f"{kind} {factory_string(kind, feats.dim, p)}",
            backend,
            metric,
            " (normalised)" if normalize and metric == "euclidean" else "",
        )
        return out

    @staticmethod
    def _pick_device(device: str) -> torch.device:
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(device)

    def _to_gpu(self) -> None:
        """Move the faiss index to the GPU when faiss has one (code path for GPU machines)."""
        faiss = _faiss("the GPU")
        if not _faiss_gpu(faiss):
            return
        try:
            self._gpu_res = faiss.StandardGpuResources()
            self._faiss = faiss.index_cpu_to_gpu(self._gpu_res, 0, self._faiss_cpu)
        except Exception as exc:  # e.g. HNSW or a PQ size the GPU code does not support
            log.info("faiss index stays on the CPU (%s: %s)", type(exc).__name__, exc)
            self._faiss = self._faiss_cpu

    # ------------------------------------------------------------------ persistence
    def save(self, path: str) -> str:
        """Write the index folder ``path`` (gallery.npz, index.json, index.faiss); return it."""
        if os.path.isfile(path):
            raise GalleryIndexError(f"{path} is a file; an index is saved as a folder")
        os.makedirs(path, exist_ok=True)
        self.features.save(os.path.join(path, "gallery.npz"))
        if self._faiss_cpu is not None:
            faiss = _faiss("saving the index")
            tmp = os.path.join(path, f"index.faiss.tmp{os.getpid()}")
            faiss.write_index(self._faiss_cpu, tmp)
            os.replace(tmp, os.path.join(path, "index.faiss"))
        info = {
            "format": INDEX_FORMAT,
            "kind": self.kind,
            "backend": self.backend,
            "metric": self.metric,
            "normalize": self.normalize,
            "params": self.params,
            "count": len(self),
            "dim": self.dim,
        }
        if self.kind != "exact":
            info["faiss"] = factory_string(self.kind, self.dim, self.params)
        tmp = os.path.join(path, f"index.json.tmp{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(info, f, indent=2)
        os.replace(tmp, os.path.join(path, "index.json"))
        return path

    @classmethod
    def load(cls, path: str, backend: str = "auto", device: str = "auto") -> GalleryIndex:
        """Read an index folder written by :meth:`save`."""
        if not os.path.exists(path):
            raise NotFoundError(f"index not found: {path}")
        info_path = os.path.join(path, "index.json")
        if not os.path.isdir(path) or not os.path.isfile(info_path):
            raise GalleryIndexError(
                f"{path} is not a partreid index folder (no index.json); "
                "build one with `partreid index FEATS --out FOLDER`"
            )
        try:
            with open(info_path) as f:
                info = json.load(f)
        except (OSError, ValueError) as exc:
            raise GalleryIndexError(f"cannot read {info_path}: {exc}") from None
        if not isinstance(info, dict) or info.get("format") != INDEX_FORMAT:
            raise GalleryIndexError(
                f"{info_path}: unknown index format {info.get('format') if isinstance(info, dict) else None!r} "
                f"(this partreid reads {INDEX_FORMAT})"
            )
        feats = Features.load(os.path.join(path, "gallery.npz"))
        kind = info.get("kind")
        if kind not in KINDS or info.get("metric") not in METRICS:
            raise GalleryIndexError(
                f"{info_path}: unknown kind {kind!r} or metric {info.get('metric')!r}"
            )
        if int(info.get("count", -1)) != len(feats) or int(info.get("dim", -1)) != feats.dim:
            raise GalleryIndexError(
                f"{path}: index.json describes {info.get('count')} x {info.get('dim')} but "
                f"gallery.npz holds {len(feats)} x {feats.dim}; the folder is inconsistent"
            )
        if backend not in BACKENDS:
            raise GalleryIndexError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        faiss_index = None
        if kind == "exact":
            use = backend if backend != "auto" else info.get("backend", "faiss")
            if use == "faiss" and not faiss_available():
                if backend == "faiss":
                    _faiss("the faiss backend")
                log.info("faiss is not installed: searching %s with the exact torch backend", path)
                use = "torch"
        else:
            if backend == "torch":
                raise GalleryIndexError(
                    f"{path} is a {kind!r} index, which only the faiss backend can search"
                )
            faiss = _faiss(f"the {kind!r} index {path}")
            fpath = os.path.join(path, "index.faiss")
            if not os.path.isfile(fpath):
                raise GalleryIndexError(f"{path}: index.faiss is missing")
            try:
                faiss_index = faiss.read_index(fpath)
            except Exception as exc:
                raise GalleryIndexError(f"cannot read {fpath}: {exc}") from None
            if faiss_index.ntotal != len(feats):
                raise GalleryIndexError(
                    f"{fpath} holds {faiss_index.ntotal} vectors but gallery.npz {len(feats)}"
                )
            use = "faiss"
        return cls(
            feats,
            info["metric"],
            bool(info.get("normalize", False)),
            kind,
            use,
            dict(info.get("params", {})),
            faiss_index,
            device,
        )

    # ------------------------------------------------------------------ search
    def __len__(self) -> int:
        return len(self.features)

    @property
    def dim(self) -> int:
        """The feature dimension."""
        return self.features.dim

    def describe(self) -> str:
        """One line: size, kind, backend, metric."""
        extra = (
            "" if self.kind == "exact" else f" [{factory_string(self.kind, self.dim, self.params)}]"
        )
        norm = " on L2-normalised features" if self.normalize and self.metric == "euclidean" else ""
        return (
            f"{len(self)} x {self.dim}-d gallery, {self.kind}{extra} index ({self.backend}, "
            f"{self.device.type}), {self.metric} distance{norm}"
        )

    def prepare_queries(self, queries: Any) -> np.ndarray:
        """Queries as float32 (M, D) in the index's search space; a clear error otherwise."""
        q = queries.features if isinstance(queries, Features) else queries
        if isinstance(q, torch.Tensor):
            q = q.detach().cpu().numpy()
        q = np.asarray(q)
        if q.ndim == 1:
            q = q.reshape(1, -1)
        if q.ndim != 2 or not np.issubdtype(q.dtype, np.number):
            raise GalleryIndexError(
                f"queries: expected an (M, D) feature array, got shape {q.shape}"
            )
        if q.shape[1] != self.dim:
            raise GalleryIndexError(
                f"the queries are {q.shape[1]}-d features but the gallery index holds "
                f"{self.dim}-d features; were they made by the same model?"
            )
        if not np.isfinite(q).all():
            raise GalleryIndexError("queries: NaN or inf in the query features")
        return search_space(q, self.metric, self.normalize)

    def search(
        self,
        queries: Any,
        topk: int = 10,
        rerank: bool = False,
        shortlist: Optional[int] = None,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        **search_params: Any,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """``(distances, indices)`` of each query's ``topk`` nearest gallery rows.

        ``queries``: (M, D) features (numpy, torch or :class:`Features`); ``topk`` above the
        gallery size is cut to it.  ``rerank``: k-reciprocal re-ranking of each query's
        shortlist of ``shortlist`` (default max(topk, 100)) nearest rows, see
        :meth:`rerank_shortlist`; the distances returned are then the re-ranked ones.
        ``search_params``: ``nprobe``, ``ef_search``, ``refine`` for this call.
        """
        if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
            raise GalleryIndexError(f"topk must be a positive integer, got {topk!r}")
        bad = sorted(set(search_params) - set(_SEARCH_PARAMS))
        if bad:
            raise GalleryIndexError(f"unknown search parameter(s) {bad}; valid: {_SEARCH_PARAMS}")
        q = self.prepare_queries(queries)
        k = min(int(topk), len(self))
        want = k
        if rerank:
            want = min(len(self), max(k, int(shortlist) if shortlist else max(k, 100)))
        d, i = self._knn(torch.from_numpy(q), want, {**self.params, **search_params})
        if rerank and len(q):
            d, i = self.rerank_shortlist(q, i, k, k1=k1, k2=k2, lambda_value=lambda_value)
        return d[:, :k].numpy().astype(np.float32), i[:, :k].numpy().astype(np.int64)

    def _knn(self, q: torch.Tensor, k: int, params: Dict[str, Any]):
        if len(q) == 0:
            return torch.empty((0, k)), torch.empty((0, k), dtype=torch.int64)
        if self.kind == "exact" and self.backend == "torch":
            return exact_knn(self._vectors, q, k, self.metric, self._g_sq, self.device)
        if self.kind == "exact":
            return self._faiss_exact(q, k)
        return approximate_search(
            self._faiss, self.kind, self._vectors, q, k, self.metric, params, self._g_sq
        )

    def _faiss_exact(self, q: torch.Tensor, k: int):
        """faiss brute force for a shortlist a little longer than k, then exact values; rows
        where ties may cross the shortlist's end are redone with the torch brute force."""
        faiss = _faiss("the faiss backend")
        n = len(self)
        s = min(n, k + max(8, k // 4))
        qn = np.ascontiguousarray(q.numpy())
        if self.device.type == "cuda" and _faiss_gpu(faiss):  # pragma: no cover - GPU machines
            if self._gpu_res is None:
                self._gpu_res = faiss.StandardGpuResources()
            fd, cand = faiss.knn_gpu(self._gpu_res, qn, self._vectors, s)
        else:
            fd, cand = faiss.knn(qn, self._vectors, s)
        cand = torch.from_numpy(cand).long()
        d, i = refine(self._vectors, q, cand, s, self.metric, self._g_sq)
        if s < n:
            # faiss's squared L2 of the last candidate bounds every row left out (up to rounding)
            last = torch.from_numpy(fd[:, -1]).float().clamp(min=0)
            kth = d[:, k - 1]
            kth_sq = kth.square() if self.metric == "euclidean" else 2 * kth  # |a-b|^2 = 2(1-cos)
            scale = torch.from_numpy(self._vectors_sq_max(qn))
            unsafe = (kth_sq >= last - 2e-5 * scale) | (i[:, k - 1] < 0)
            rows = torch.nonzero(unsafe).flatten()
            if rows.numel():
                d2, i2 = exact_knn(self._vectors, q[rows], k, self.metric, self._g_sq, "cpu")
                d, i = d[:, :k].clone(), i[:, :k].clone()
                d[rows], i[rows] = d2, i2
        return d[:, :k], i[:, :k]

    def _vectors_sq_max(self, q: np.ndarray) -> np.ndarray:
        """``|q|^2 + max |g|^2`` per query: the scale of the rounding in squared distances."""
        if self.metric == "cosine":
            return np.full(len(q), 4.0, np.float32)
        if not hasattr(self, "_g_sq_max"):
            self._g_sq_max = float(self._g_sq.max()) if len(self) else 0.0
        return (np.square(q).sum(1) + self._g_sq_max).astype(np.float32)

    def rerank_shortlist(
        self,
        queries: np.ndarray,
        shortlist: torch.Tensor,
        topk: int,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """k-reciprocal re-ranking of each query's shortlist, one query at a time.

        For a query q and its S shortlisted rows, :func:`partreid.metrics.re_rank_features`
        runs on the S + 1 items {q} + shortlist: the k-reciprocal neighbour sets, their
        Gaussian-weighted encodings (local query expansion over k2) and the Jaccard distance are
        computed among those items only, and the final distance is
        ``lambda * original + (1 - lambda) * jaccard`` (original = squared distance over its
        row maximum).  Rows outside the shortlist are never considered, so the result is a
        re-ordering of the shortlist (its first ``topk``); it equals ``partreid eval --rerank``
        only when the shortlist is the whole gallery and the query is alone (eval re-ranks all
        queries together).  Queries are independent: a batch gives the same answer as singles.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        m = len(q)
        out_d = torch.full((m, topk), float("inf"))
        out_i = torch.full((m, topk), -1, dtype=torch.int64)
        for r in range(m):
            cand = shortlist[r]
            cand = cand[cand >= 0]
            if cand.numel() == 0:
                continue
            g = self._vectors[cand.numpy()]
            rr = re_rank_features(
                q[r : r + 1], g, k1=k1, k2=k2, lambda_value=lambda_value, metric=self.metric
            )
            rr = torch.as_tensor(np.asarray(rr), dtype=torch.float32)
            vals, pos = _sort_pairs(rr, cand.unsqueeze(0))
            t = min(topk, cand.numel())
            out_d[r, :t], out_i[r, :t] = vals[0, :t], pos[0, :t]
        return out_d, out_i


# ============================================================================ entry points
def resolve_metric(
    meta: Dict[str, Any], metric: Optional[str] = None, normalize: Optional[bool] = None
) -> Tuple[str, bool]:
    """``(metric, normalize)``: given values, else the features' meta, else euclidean / False."""
    if metric is None:
        metric = meta.get("distance") or "euclidean"
    if metric not in METRICS:
        raise GalleryIndexError(f"metric: expected one of {METRICS}, got {metric!r}")
    if normalize is None:
        normalize = bool(meta.get("normalize", False))
    return metric, bool(normalize)


def open_gallery(path: str, backend: str = "auto", device: str = "auto") -> GalleryIndex:
    """A saved index folder, or a features ``.npz`` indexed exactly on the fly."""
    if os.path.isdir(path):
        return GalleryIndex.load(path, backend=backend, device=device)
    if not os.path.exists(path):
        raise NotFoundError(f"gallery not found: {path} (an index folder or a features .npz)")
    try:
        feats = Features.load(path)
    except FeaturesFileError as exc:
        raise GalleryIndexError(
            f"{path}: not an index folder nor a features file ({exc})"
        ) from None
    return GalleryIndex.build(feats, kind="exact", backend=backend, device=device)
