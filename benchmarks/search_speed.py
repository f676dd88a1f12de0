"""Gallery search speed: approximate faiss indexes (partreid.index) against exact search.

    nice -n 10 python benchmarks/search_speed.py --sizes 100000 \
        --configs pca-ivfflat pca-ivfpq pca-hnsw --nprobe 32 64 128 256 --ef-search 64 128 256
    nice -n 10 python benchmarks/search_speed.py --sizes 1000000 --configs pca-ivfflat pca-ivfpq \
        --nprobe 64 128 256 512 --queries 384 --single 100 --numpy-single 2 --numpy-b64 1
    python benchmarks/search_speed.py --fit-spectrum FEATURES.npz   # spectrum of real features

For each gallery size N (a synthetic Re-ID-like gallery, 3,072-d, see ``generate``) and each
index configuration it prints: build time (train + add), index size, peak RSS of the process,
query latency p50 / p99 at batch 1 and batch 64 (per batch and per query) and recall@10
against exact search; next to it brute-force numpy baselines in the same process: the float16
gallery streamed in 8,192-row blocks converted to float32 (bounded memory, any N), and, where a
float32 copy fits under ``--f32-limit-gb``, the same products on a resident float32 matrix.
Each size runs in its own child process, so its peak RSS is its own.

Memory: the gallery is held once, as float16 (N x D x 2 bytes: 6.1 GB at 1M x 3,072); it is
generated, indexed (PCA/IVF/PQ trained on a sample, vectors added in chunks), refined and
brute-forced block by block, so nothing holds an N x D float32 copy (12.3 GB at 1M) unless the
resident baseline is asked for.  The synthetic data set *is* the float16 values, so the exact
reference and the refinement use the same numbers.

The synthetic gallery (``--spectrum``): identities with ``views`` views each; queries are
further views of random gallery identities.  ``same-id top-10`` in the output says how often
the exact top-10 are the query's own identity, i.e. how hard the data set is.

- ``measured`` (default): centre ~ N(0, diag(b)), view = centre + N(0, diag(w)), with b_j, w_j
  the per-principal-axis variances between and within identities fitted (``MEASURED``,
  ``fit_spectrum``) to real features: the BoT (MobileNetV2, 1,280-d) trained on CUHK03-NP, on
  its 7,365 training crops.  Assumptions: features are Gaussian given the identity; the within-
  identity nuisance is the same for every identity and shares the principal axes of the whole
  set (measured, not assumed, is how its variance splits over those axes); the fitted curves
  extend the 1,280-d spectrum to ``--dim`` (at 3,072-d: 50/80/90/95 % of the variance in
  17/75/156/285 axes, real 14/78/155/260; PCA-256 keeps 94.3 %, real 94.9 %); the
  principal axes are the coordinate axes (L2 distances and PCA are rotation invariant).  The
  model's training crops give a lower within/between ratio than unseen people would.
- ``shared-powerlaw`` (the first version): centres N(0, diag(lam^2)), lam_j^2 = 1/(1+j), views
  add nuisance with the same spectrum (x 0.7) plus isotropic noise (0.3 x the mean std), the
  coordinates permuted, sign-flipped and shifted by a positive mean.  Its isotropic part spreads
  the neighbour structure over all 3,072 axes, which PCA-256 cannot keep.
"""

from __future__ import annotations

import os

# one BLAS thread unless asked otherwise: on a shared 2-core machine OpenBLAS's spinning worker
# threads made faiss's k-means and PCA training many times slower
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

CONFIGS = {
    # name: (kind, params); nlist / nprobe / train sizes scale with N (see main)
    "pca-ivfpq": ("ivfpq", {"pca": 256, "m": 64, "nbits": 8}),
    "ivfpq": ("ivfpq", {"pca": 0, "m": 96, "nbits": 8}),
    "pca-ivfflat": ("ivfflat", {"pca": 256}),
    "pca-hnsw": ("hnsw", {"pca": 256, "hnsw_m": 32, "ef_construction": 80}),
}


def rss_gb() -> tuple:
    """(current, peak) resident set size of this process in GB."""
    cur = peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 2**20
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 2**20
    return cur, peak


# Measured spectrum (``--spectrum measured``, the default): per principal axis j (0-based) of the
# real features, the variance of the identity centres b_j and of the views around their centre
# w_j, each fitted as s_j = A (1 + j / j0) ** -alpha.  Fitted by ``--fit-spectrum FEATURES.npz``
# to the BoT (MobileNetV2, 1,280-d) trained on CUHK03-NP, features of the 7,365 training crops
# (flip-averaged, not normalised); see fit_spectrum for the corrections.
MEASURED = {"between": (85.28, 4.147, 1.960), "within": (17.02, 54.95, 2.413)}


def _fit_curve(s: np.ndarray, upto: int) -> tuple:
    """(A, j0, alpha) of s_j ~ A (1 + j/j0)^-alpha: least squares in log space at j < upto
    spaced evenly in log j (so the few leading axes weigh as much as the long tail)."""
    j = np.unique(np.geomspace(1, upto, 64).astype(np.int64)) - 1.0
    y = np.log(np.maximum(s[j.astype(np.int64)], 1e-12))
    best = None
    for j0 in np.geomspace(0.25, 200, 120):
        x = -np.log1p(j / j0)
        alpha, log_a = np.polyfit(x, y, 1)
        err = float(((alpha * x + log_a - y) ** 2).mean())
        if best is None or err < best[0]:
            best = (err, float(np.exp(log_a)), float(j0), float(alpha))
    return best[1:]


def fit_spectrum(path: str) -> dict:
    """Spectrum figures of a features file (.npz with pids) and the (A, j0, alpha) fits."""
    from partreid.features import Features

    f = Features.load(path)
    x = f.features.astype(np.float64)
    x = x - x.mean(0)
    n, d = x.shape
    ev, vec = np.linalg.eigh(np.cov(x.T))
    ev, vec = ev[::-1], vec[:, ::-1]
    cum = np.cumsum(ev) / ev.sum()
    _, inv, counts = np.unique(np.asarray(f.pids), return_inverse=True, return_counts=True)
    ids = len(counts)
    cen = np.zeros((ids, d))
    np.add.at(cen, inv, x)
    cen /= counts[:, None]
    resid = x - cen[inv]
    # residuals around a sample mean of n_i views shrink by (n_i - 1) / n_i; a sample mean
    # carries w / n_i of view noise: undo both so b and w estimate the generating variances
    w = ((resid @ vec) ** 2).sum(0) / (n - ids)
    b = np.maximum(((cen @ vec) ** 2).mean(0) - w * float(np.mean(1.0 / counts)), 1e-12)
    upto = min(d, ids - 1)  # between-identity variance has rank < ids
    dist = {}
    rng = np.random.default_rng(0)
    a, c = rng.integers(0, n, (2, 200000))
    same = inv[a] == inv[c]
    dd = np.sqrt(((x[a] - x[c]) ** 2).sum(1))
    dist = {
        "same_id_mean": float(dd[same & (a != c)].mean()),
        "other_id_mean": float(dd[~same].mean()),
    }
    return {
        "file": path,
        "n": n,
        "ids": ids,
        "dim": d,
        "components_for": {
            str(p): int(np.searchsorted(cum, p) + 1) for p in (0.5, 0.8, 0.9, 0.95, 0.99)
        },
        "pca256_variance": float(cum[min(255, d - 1)]),
        "participation_ratio": float(ev.sum() ** 2 / (ev**2).sum()),
        "within_over_between_variance": float(w.sum() / b.sum()),
        "pair_distance": dist,
        "between": _fit_curve(b, upto),
        "within": _fit_curve(w, min(d, n // 4)),
        "fit_range": [upto, min(d, n // 4)],
    }


def spectrum_std(spectrum: str, dim: int) -> tuple:
    """Per-axis standard deviations (centres, views around the centre) of a synthetic gallery."""
    j = np.arange(dim, dtype=np.float64)
    if spectrum == "measured":
        (ab, jb, pb), (aw, jw, pw) = MEASURED["between"], MEASURED["within"]
        return (
            np.sqrt(ab * (1 + j / jb) ** -pb).astype(np.float32),
            np.sqrt(aw * (1 + j / jw) ** -pw).astype(np.float32),
        )
    lam = 1.0 / np.sqrt(1.0 + j)  # "shared-powerlaw": the first version of this benchmark
    view_scale, iso = 0.7, 0.3
    return lam.astype(np.float32), np.sqrt(
        view_scale**2 * lam**2 + iso**2 * (lam**2).mean()
    ).astype(np.float32)


def spectrum_summary(spectrum: str, dim: int) -> dict:
    """The generating spectrum's figures, comparable with fit_spectrum's."""
    c, v = spectrum_std(spectrum, dim)
    b, w = c.astype(np.float64) ** 2, v.astype(np.float64) ** 2
    t = b + w
    cum = np.cumsum(t) / t.sum()
    return {
        "components_for": {
            str(p): int(np.searchsorted(cum, p) + 1) for p in (0.5, 0.8, 0.9, 0.95, 0.99)
        },
        "pca256_variance": round(float(cum[min(255, dim - 1)]), 4),
        "participation_ratio": round(float(t.sum() ** 2 / (t**2).sum()), 1),
        "within_over_between_variance": round(float(w.sum() / b.sum()), 3),
    }


def generate(n, dim, views, num_queries, seed=0, spectrum="measured", chunk_ids=4096):
    """Gallery (float16, N x D, identity-major), its pids, and query features (float16) + pids."""
    ids = -(-n // views)
    rng = np.random.default_rng(seed)
    centre_std, view_std = spectrum_std(spectrum, dim)
    if spectrum == "measured":  # principal axes = coordinate axes (L2 and PCA do not care)
        perm, signs, mean = np.arange(dim), np.ones(dim, np.float32), np.zeros(dim, np.float32)
    else:
        perm = rng.permutation(dim)
        signs = rng.choice(np.float32([-1, 1]), dim)
        mean = np.abs(rng.normal(size=dim)).astype(np.float32) * float(
            np.sqrt((centre_std**2).mean())
        )
    q_ids = np.sort(rng.choice(ids, num_queries, replace=False))
    gallery = np.empty((n, dim), np.float16)
    pids = np.repeat(np.arange(ids), views)[:n]
    queries = np.empty((num_queries, dim), np.float16)

    def finish(x):
        if spectrum == "measured":
            return x.astype(np.float16)
        return (x[:, perm] * signs + mean).astype(np.float16)

    def normal(gen, shape):  # torch's generator: ~10x numpy's speed for billions of draws
        return torch.randn(shape, generator=gen).numpy()

    for c0 in range(0, ids, chunk_ids):
        c1 = min(ids, c0 + chunk_ids)
        r = torch.Generator().manual_seed(seed * 1_000_003 + c0)
        centres = normal(r, (c1 - c0, dim)) * centre_std
        a, b = c0 * views, min(n, c1 * views)
        x = np.repeat(centres, views, axis=0)[: b - a]
        x += normal(r, x.shape) * view_std
        gallery[a:b] = finish(x)
        sel = np.nonzero((q_ids >= c0) & (q_ids < c1))[0]
        if len(sel):
            y = centres[q_ids[sel] - c0]
            y = y + normal(r, y.shape) * view_std
            queries[sel] = finish(y)
    return gallery, pids, queries, q_ids


def gallery_sq(gallery, block=16384) -> np.ndarray:
    """Squared row norms (float32) of a gallery, computed block by block."""
    out = np.empty(len(gallery), np.float32)
    for a in range(0, len(gallery), block):
        g = gallery[a : a + block].astype(np.float32)
        out[a : a + block] = np.einsum("ij,ij->i", g, g)
    return out


def numpy_knn(gallery, queries, k, g_sq, block=8192):
    """Brute force in numpy: float32 products over row blocks (a float16 gallery is converted
    block by block, so memory stays bounded), argpartition; (squared dists, rows)."""
    q = queries.astype(np.float32)
    q_sq = (q * q).sum(1, keepdims=True)
    best_d = np.full((len(q), k), np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    for a in range(0, len(gallery), block):
        g = gallery[a : a + block]
        if g.dtype != np.float32:
            g = g.astype(np.float32)
        d = q @ g.T
        d *= -2.0
        d += g_sq[None, a : a + block]
        d += q_sq
        kk = min(k, d.shape[1])
        part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
        cd = np.concatenate([best_d, np.take_along_axis(d, part, 1)], 1)
        ci = np.concatenate([best_i, part + a], 1)
        o = np.argsort(cd, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(cd, o, 1), np.take_along_axis(ci, o, 1)
    return np.maximum(best_d, 0), best_i


def pct(times, p):
    return float(np.percentile(np.asarray(times) * 1000.0, p))


def latency(fn, queries, batch, max_batches):
    """Per-batch wall times (s) of fn over consecutive batches of ``queries``."""
    out = []
    for b in range(min(max_batches, len(queries) // batch)):
        x = queries[b * batch : (b + 1) * batch]
        t = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t)
    return out


def run_size(args) -> dict:
    import faiss

    from partreid.index import (
        add_in_chunks,
        approximate_search,
        default_params,
        factory_string,
        train_faiss_index,
    )

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    n, dim, k = args.one_size, args.dim, 10
    res = {"n": n, "dim": dim, "threads": args.threads, "configs": []}
    t = time.perf_counter()
    gallery, pids, queries, q_ids = generate(
        n, dim, args.views, args.queries, args.seed, args.spectrum
    )
    res["spectrum"] = args.spectrum
    res["generate_s"] = time.perf_counter() - t
    res["gallery_gb"] = gallery.nbytes / 1e9
    print(
        f"[N={n}] generated {n} x {dim} float16 ({gallery.nbytes / 1e9:.2f} GB, spectrum "
        f"{args.spectrum}) in {res['generate_s']:.0f} s; RSS {rss_gb()[0]:.2f} GB",
        flush=True,
    )
    res["spectrum_summary"] = spectrum_summary(args.spectrum, dim)
    print(f"[N={n}] spectrum {args.spectrum}: {json.dumps(res['spectrum_summary'])}", flush=True)
    g_sq = gallery_sq(gallery)

    # exact reference = the numpy baseline over all queries (its time is the batch-Q figure)
    t = time.perf_counter()
    _, truth = numpy_knn(gallery, queries, k, g_sq)
    res["exact_all_s"] = time.perf_counter() - t
    same = (pids[truth] == q_ids[:, None]).mean()
    res["same_id_top10"] = float(same)
    res["same_id_rank1"] = float((pids[truth[:, 0]] == q_ids).mean())
    print(
        f"[N={n}] exact top-10 of {len(queries)} queries in {res['exact_all_s']:.0f} s; "
        f"same-id top-10 {same:.3f}, rank-1 {res['same_id_rank1']:.3f}",
        flush=True,
    )
    # the numpy baselines: float16 storage streamed as float32 blocks (what fits at any N), and
    # a resident float32 copy where it fits under --f32-limit-gb (no conversion per query)
    baselines = [("numpy fp16->fp32 blocks", gallery)]
    if gallery.size * 4 / 1e9 <= args.f32_limit_gb:
        baselines.append(("numpy fp32 resident", gallery.astype(np.float32)))
    res["numpy"] = []
    for label, g in baselines:
        b1 = latency(lambda x, g=g: numpy_knn(g, x, k, g_sq), queries, 1, args.numpy_single)
        b64 = latency(lambda x, g=g: numpy_knn(g, x, k, g_sq), queries, 64, args.numpy_b64)
        nb = {
            "baseline": label,
            "gb": g.nbytes / 1e9,
            "b1_p50_ms": pct(b1, 50),
            "b1_p99_ms": pct(b1, 99),
            "b1_n": len(b1),
            "b64_p50_ms": pct(b64, 50),
            "b64_p99_ms": pct(b64, 99),
            "b64_n": len(b64),
            "b64_per_query_ms": pct(b64, 50) / 64,
        }
        res["numpy"].append(nb)
        print(f"[N={n}] {json.dumps(nb)}", flush=True)
        del g
    baselines = None

    qt = torch.from_numpy(queries.astype(np.float32))
    for name in args.configs:
        kind, given = CONFIGS[name]
        given = dict(given)
        if kind != "hnsw":
            given.setdefault("nlist", args.nlist or None)
        given["train_size"] = min(n, args.train_size)
        p = default_params(kind, n, dim, **{k_: v for k_, v in given.items() if v is not None})
        rss0 = rss_gb()[0]
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        sample = gallery[np.sort(rng.choice(n, p["train_size"], replace=False))].astype(np.float32)
        index = train_faiss_index(kind, dim, p, sample)
        del sample
        t1 = time.perf_counter()
        add_in_chunks(index, (gallery[a : a + 65536] for a in range(0, n, 65536)))
        t2 = time.perf_counter()
        path = os.path.join(args.workdir, f"search_speed_{os.getpid()}.faiss")
        faiss.write_index(index, path)
        size_gb = os.path.getsize(path) / 1e9
        os.remove(path)
        row = {
            "config": name,
            "faiss": factory_string(kind, dim, p),
            "train_s": t1 - t0,
            "add_s": t2 - t1,
            "index_gb": size_gb,
            "rss_delta_gb": rss_gb()[0] - rss0,
            "train_size": p["train_size"],
            "sweep": [],
        }
        print(
            f"[N={n}] {name} {row['faiss']}: train {row['train_s']:.0f} s, add "
            f"{row['add_s']:.0f} s, index {size_gb:.3f} GB, RSS {rss_gb()[0]:.2f} GB",
            flush=True,
        )
        knob = "ef_search" if kind == "hnsw" else "nprobe"
        values = args.ef_search if kind == "hnsw" else args.nprobe
        for v in values:
            for refine in args.refine:
                sp = {**p, knob: v, "refine": refine}

                def fn(x, sp=sp, index=index, kind=kind):
                    return approximate_search(index, kind, gallery, x, k, "euclidean", sp)

                _, got = fn(qt)
                got = got.numpy()
                recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, truth)]))
                b1 = latency(fn, qt, 1, args.single)
                b64 = latency(fn, qt, 64, len(queries) // 64)
                s = {
                    knob: v,
                    "refine": refine,
                    "recall10": recall,
                    "b1_p50_ms": pct(b1, 50),
                    "b1_p99_ms": pct(b1, 99),
                    "b64_p50_ms": pct(b64, 50),
                    "b64_p99_ms": pct(b64, 99),
                    "b64_per_query_ms": pct(b64, 50) / 64,
                }
                row["sweep"].append(s)
                print(
                    f"[N={n}]   {name} {knob}={v} refine={refine}: "
                    + json.dumps(
                        {a: round(b, 4) if isinstance(b, float) else b for a, b in s.items()}
                    ),
                    flush=True,
                )
        res["configs"].append(row)
        del index
    res["peak_rss_gb"] = rss_gb()[1]
    print(f"[N={n}] peak RSS {res['peak_rss_gb']:.2f} GB", flush=True)
    return res


def table(results) -> str:
    lines = [
        "| N | index | build s (train + add) | index GB | knob | recall@10 | batch 1 p50 / p99 ms | "
        "batch 64 p50 / p99 ms (per query) | peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for nb in r["numpy"]:
            lines.append(
                f"| {r['n']:,} | {nb['baseline']} (exact) | - | {nb['gb']:.2f} | - | 1 | "
                f"{nb['b1_p50_ms']:.0f} / {nb['b1_p99_ms']:.0f} (n={nb['b1_n']}) | "
                f"{nb['b64_p50_ms']:.0f} / {nb['b64_p99_ms']:.0f} ({nb['b64_per_query_ms']:.1f}) | "
                f"{r['peak_rss_gb']:.2f} |"
            )
        for c in r["configs"]:
            for s in c["sweep"]:
                knob = ", ".join(f"{k}={s[k]}" for k in ("nprobe", "ef_search", "refine") if k in s)
                lines.append(
                    f"| {r['n']:,} | {c['config']} `{c['faiss']}` | {c['train_s'] + c['add_s']:.0f} "
                    f"({c['train_s']:.0f} + {c['add_s']:.0f}) | {c['index_gb']:.3f} | {knob} | "
                    f"{s['recall10']:.3f} | {s['b1_p50_ms']:.2f} / {s['b1_p99_ms']:.2f} | "
                    f"{s['b64_p50_ms']:.1f} / {s['b64_p99_ms']:.1f} ({s['b64_per_query_ms']:.2f}) | |"
                )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100000, 1000000])
    ap.add_argument("--dim", type=int, default=3072)
    ap.add_argument("--views", type=int, default=8, help="gallery images per identity")
    ap.add_argument("--queries", type=int, default=640)
    ap.add_argument("--configs", nargs="+", default=["pca-ivfpq"], choices=sorted(CONFIGS))
    ap.add_argument("--nlist", type=int, default=None, help="default ~4 sqrt(N)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--refine", type=int, nargs="+", default=[10])
    ap.add_argument("--train-size", type=int, default=100000)
    ap.add_argument("--single", type=int, default=200, help="batch-1 queries timed")
    ap.add_argument("--numpy-single", type=int, default=5, help="batch-1 numpy queries timed")
    ap.add_argument("--numpy-b64", type=int, default=2, help="batch-64 numpy batches timed")
    ap.add_argument(
        "--f32-limit-gb",
        type=float,
        default=4.0,
        help="also time numpy on a resident float32 copy when it is at most this large",
    )
    ap.add_argument(
        "--spectrum",
        default="measured",
        choices=["measured", "shared-powerlaw"],
        help="synthetic gallery: the spectrum fitted to real features, or the first version's",
    )
    ap.add_argument(
        "--fit-spectrum", metavar="FEATURES", help="print the spectrum of a features file"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch and faiss threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fit_spectrum:
        print(json.dumps(fit_spectrum(args.fit_spectrum), indent=1))
        return
    if args.one_size:
        print("RESULT " + json.dumps(run_size(args)), flush=True)
        return
    results = []
    for n in args.sizes:
        argv, skip = [], False  # the child gets every argument but --sizes
        for a in sys.argv[1:]:
            if a == "--sizes":
                skip = True
                continue
            if skip and not a.startswith("--"):
                continue
            skip = False
            argv.append(a)
        cmd = [sys.executable, __file__, "--one-size", str(n), *argv]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            for line in proc.stdout:
                if line.startswith("RESULT "):
                    results.append(json.loads(line[7:]))
                else:
                    print(line, end="", flush=True)
        if proc.returncode:
            print(f"N={n}: child exited with {proc.returncode}")
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
