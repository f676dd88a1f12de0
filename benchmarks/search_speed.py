"""Gallery search speed: approximate faiss indexes (partreid.deploy.index) against exact search.

    nice -n 10 python benchmarks/search_speed.py --sizes 100000              # ~10 minutes
    nice -n 10 python benchmarks/search_speed.py --sizes 1000000 --configs pca-ivfpq

For each gallery size N (a synthetic Re-ID-like gallery, 3,072-d, see ``generate``) and each
index configuration it prints: build time (train + add), index size, peak RSS of the process,
query latency p50 / p99 at batch 1 and batch 64 (per batch and per query) and recall@10
against exact search; next to it a brute-force numpy baseline (the same gallery, blocked
float32 matrix products) timed at batch 1 and batch 64 in the same process.  Each size runs in
its own child process, so its peak RSS is its own.

Memory: the gallery is held once, as float16 (N x D x 2 bytes: 6.1 GB at 1M x 3,072); it is
generated, indexed (PCA/IVF/PQ trained on a sample, vectors added in chunks), refined and
brute-forced block by block, so nothing holds an N x D float32 copy (12.3 GB at 1M).  The
synthetic data set *is* the float16 values, so the exact reference and the refinement use the
same numbers.

The synthetic gallery: identities with ``views`` views each.  Identity centres are drawn from
N(0, diag(lam^2)) with a power-law spectrum lam_j^2 = 1/(1+j) (the effective dimension of such
features is ~45, like pooled CNN embeddings), views add nuisance with the same spectrum
(``view_scale``) plus a little isotropic noise, and the coordinates are permuted and sign-
flipped at random (so no axis carries the spectrum) and shifted by a positive mean.  Queries are
further views of random gallery identities.  ``same-id top-10`` in the output says how often the
exact top-10 are the query's own identity, i.e. how hard the data set is.
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


def generate(n, dim, views, num_queries, seed=0, view_scale=0.7, iso=0.3, chunk_ids=4096):
    """Gallery (float16, N x D, identity-major), its pids, and query features (float16) + pids."""
    ids = -(-n // views)
    rng = np.random.default_rng(seed)
    lam = (1.0 / np.sqrt(1.0 + np.arange(dim))).astype(np.float32)
    perm = rng.permutation(dim)
    signs = rng.choice(np.float32([-1, 1]), dim)
    mean = np.abs(rng.normal(size=dim)).astype(np.float32) * float(np.sqrt((lam**2).mean()))
    noise_std = np.sqrt(view_scale**2 * lam**2 + iso**2 * (lam**2).mean()).astype(np.float32)
    q_ids = np.sort(rng.choice(ids, num_queries, replace=False))
    gallery = np.empty((n, dim), np.float16)
    pids = np.repeat(np.arange(ids), views)[:n]
    queries = np.empty((num_queries, dim), np.float16)

    def finish(x):
        return (x[:, perm] * signs + mean).astype(np.float16)

    def normal(gen, shape):  # torch's generator: ~10x numpy's speed for billions of draws
        return torch.randn(shape, generator=gen).numpy()

    for c0 in range(0, ids, chunk_ids):
        c1 = min(ids, c0 + chunk_ids)
        r = torch.Generator().manual_seed(seed * 1_000_003 + c0)
        centres = normal(r, (c1 - c0, dim)) * lam
        a, b = c0 * views, min(n, c1 * views)
        x = np.repeat(centres, views, axis=0)[: b - a]
        x += normal(r, x.shape) * noise_std
        gallery[a:b] = finish(x)
        sel = np.nonzero((q_ids >= c0) & (q_ids < c1))[0]
        if len(sel):
            y = centres[q_ids[sel] - c0]
            y = y + normal(r, y.shape) * noise_std
            queries[sel] = finish(y)
    return gallery, pids, queries, q_ids


def numpy_knn(gallery, queries, k, block=16384):
    """Brute force in numpy: blocked float32 products, argpartition; (squared dists, rows)."""
    q = queries.astype(np.float32)
    q_sq = (q * q).sum(1, keepdims=True)
    best_d = np.full((len(q), k), np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    for a in range(0, len(gallery), block):
        g = gallery[a : a + block].astype(np.float32)
        d = (g * g).sum(1)[None, :] - 2.0 * (q @ g.T) + q_sq
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

    from partreid.deploy.index import (
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
    gallery, pids, queries, q_ids = generate(n, dim, args.views, args.queries, args.seed)
    res["generate_s"] = time.perf_counter() - t
    res["gallery_gb"] = gallery.nbytes / 1e9
    print(
        f"[N={n}] generated {n} x {dim} float16 ({gallery.nbytes / 1e9:.2f} GB) in "
        f"{res['generate_s']:.0f} s; RSS {rss_gb()[0]:.2f} GB",
        flush=True,
    )

    # exact reference = the numpy baseline over all queries (its time is the batch-Q figure)
    t = time.perf_counter()
    _, truth = numpy_knn(gallery, queries, k)
    res["exact_all_s"] = time.perf_counter() - t
    same = (pids[truth] == q_ids[:, None]).mean()
    res["same_id_top10"] = float(same)
    res["same_id_rank1"] = float((pids[truth[:, 0]] == q_ids).mean())
    b1 = latency(lambda x: numpy_knn(gallery, x, k), queries, 1, args.numpy_single)
    b64 = latency(lambda x: numpy_knn(gallery, x, k), queries, 64, 1)
    res["numpy"] = {
        "b1_p50_ms": pct(b1, 50),
        "b1_p99_ms": pct(b1, 99),
        "b1_n": len(b1),
        "b64_ms": pct(b64, 50),
        "b64_per_query_ms": pct(b64, 50) / 64,
        f"b{len(queries)}_per_query_ms": res["exact_all_s"] * 1000 / len(queries),
    }
    print(
        f"[N={n}] exact numpy: {json.dumps(res['numpy'])}; same-id top-10 {same:.3f}, "
        f"rank-1 {res['same_id_rank1']:.3f}",
        flush=True,
    )

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
        nb = r["numpy"]
        lines.append(
            f"| {r['n']:,} | numpy brute force (exact) | - | {r['gallery_gb']:.2f} (fp16) | - | 1 | "
            f"{nb['b1_p50_ms']:.0f} / {nb['b1_p99_ms']:.0f} (n={nb['b1_n']}) | "
            f"{nb['b64_ms']:.0f} ({nb['b64_per_query_ms']:.1f}) | {r['peak_rss_gb']:.2f} |"
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
    ap.add_argument("--threads", type=int, default=1, help="torch and faiss threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
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
