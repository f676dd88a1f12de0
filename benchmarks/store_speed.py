"""Gallery store speed (partreid.store), the backends side by side: add rate, filtered search
latency and recall, delete of a day, stats; and the ingest rate of 1, 2, 4 writers into a server.

    python benchmarks/store_speed.py                                  # smoke run: 20k crops
    nice -n 10 python benchmarks/store_speed.py --n 1000000 --dim 768 \\
        --backends embedded milvus-server --workers 1 2 4             # the README's figures
    python benchmarks/store_speed.py --backends milvus-server \\
        --server-uri milvus://root:Milvus@10.0.0.5:19530              # a server of your own

Backends: ``embedded`` (a folder), ``milvus`` (a Milvus Lite file; ``--lite-n`` caps its size)
and ``milvus-server``: the URI ``--server-uri`` or, without it, a Milvus standalone started here
from the ``milvus`` wheel (:class:`partreid.store.milvus_server.LocalMilvus`, production
defaults, stopped at the end). ``--server-options`` are the store URI's options (default
``index=hnsw&M=16&efConstruction=128&ef=128``).

The synthetic crops are ``search_speed.generate``'s Re-ID-like gallery (the ``measured``
spectrum, imported from benchmarks/search_speed.py, not copied): identities of ``--views``
views; each identity's views are cut into tracks of ``--track-len`` crops, each track in one of
``--cameras`` cameras (random), starting at a random time within ``--days`` days, one crop per
second. Queries are further views of random gallery identities; each is searched with two
filters around one of its own identity's tracks: (its camera, a 2-hour window) and (its camera
+ 9 random others, one day), by crop and by tracklet, and without a filter.

Printed per backend (each in its own child process, so the peak RSS is its own; a started
server's own peak RSS apart): add rate (batches of ``--batch``), for a server the time its
index took after the adds, search p50/p99 at batch 1 for each filter and recall@10 against
exact numpy on the same filtered subset (the whole gallery without a filter), flagged where it
is below ``--recall``; ``stats`` time; delete of the first day. Then, for a server, the ingest
rate of ``--workers`` separate writer processes at once (one camera set each, ``--worker-n``
crops in all), every crop and tracklet checked once. Nothing is asserted.

Memory: the gallery is held as float16 (N x D x 2 bytes: 1.5 GB at 1M x 768) in each child;
the embedded store adds its in-memory faiss IndexFlatIP (N x D x 4: 3.1 GB); Milvus holds the
vectors in memory too (its own process for a server).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from search_speed import generate, pct, rss_gb  # noqa: E402

DAY = 86400.0
T0 = 1_700_000_000.0  # 2023-11-14, UTC
FILTERS = ("cam_2h", "cam10_day", None)
SERVER_OPTIONS = "index=hnsw&M=16&efConstruction=128&ef=128"


def synth(args) -> dict:
    """The gallery (float16), its metadata columns and the queries with their filters."""
    g, pids, q, q_ids = generate(args.n, args.dim, args.views, args.queries, seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    n = args.n
    track = np.arange(n) // args.track_len
    ntr = int(track[-1]) + 1
    cam_t = rng.integers(0, args.cameras, ntr)
    start_t = T0 + rng.uniform(0, args.days * DAY, ntr)
    pos = np.arange(n) % args.track_len
    camera = cam_t[track]
    ts = start_t[track] + pos
    filters = []
    for qi in q_ids:
        first = int(np.searchsorted(pids, qi))  # the identity's first crop and its track
        t, c = float(ts[first]), int(camera[first])
        cams10 = [c] + [int(x) for x in rng.choice(args.cameras, 9, replace=False) if x != c][:9]
        filters.append(
            {
                "cam_2h": dict(cameras=[c], after=t - 3600.0, before=t + 3600.0),
                "cam10_day": dict(cameras=cams10, after=t - DAY / 2, before=t + DAY / 2),
            }
        )
    return dict(g=g, pids=pids, q=q, camera=camera, ts=ts, track=track % 1_000_000_000, f=filters)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def exact(data: dict, by: str, query: np.ndarray, flt: dict, k: int, tr: dict) -> list:
    """Exact filtered top-k ids (crop ids or tracklet ids) with numpy."""
    qn = _unit(query)
    if by == "crop":
        ok = np.isin(data["camera"], flt["cameras"])
        ok &= (data["ts"] >= flt["after"]) & (data["ts"] < flt["before"])
        idx = np.nonzero(ok)[0]
        s = _unit(data["g"][idx]) @ qn
        return [int(idx[i]) for i in np.argsort(-s, kind="stable")[:k]]
    ok = np.isin(tr["camera"], flt["cameras"]) & (tr["end"] >= flt["after"])
    ok &= tr["start"] < flt["before"]
    idx = np.nonzero(ok)[0]
    s = tr["feat"][idx] @ qn
    return [tr["key"][i] for i in idx[np.argsort(-s, kind="stable")[:k]]]


def exact_unfiltered(data: dict, tr: dict, queries: np.ndarray, k: int) -> dict:
    """Exact top-k crop ids and tracklet ids of each query over everything, in chunks."""
    qn = _unit(queries)
    best = np.full((len(qn), 0), -np.inf, np.float32)
    ids = np.zeros((len(qn), 0), np.int64)
    for a in range(0, len(data["g"]), 65536):
        s = qn @ _unit(data["g"][a : a + 65536]).T
        best = np.concatenate([best, s], 1)
        ids = np.concatenate([ids, np.broadcast_to(np.arange(a, a + s.shape[1]), s.shape)], 1)
        top = np.argsort(-best, 1, kind="stable")[:, :k]
        best, ids = np.take_along_axis(best, top, 1), np.take_along_axis(ids, top, 1)
    s = qn @ tr["feat"].T
    trk = [[tr["key"][i] for i in row] for row in np.argsort(-s, 1, kind="stable")[:, :k]]
    return {"crop": ids.tolist(), "tracklet": trk}


def tracklets(data: dict, track_len: int) -> dict:
    """Per track: key, camera, span and the normalised mean of the normalised crop features."""
    n, d = data["g"].shape
    ntr = -(-n // track_len)
    feat = np.zeros((ntr, d), np.float32)
    for a in range(0, n, 65536):
        b = min(n, a + 65536)
        np.add.at(feat, data["track"][a:b], _unit(data["g"][a:b]))
    feat /= np.linalg.norm(feat, axis=1, keepdims=True)
    first = np.arange(0, n, track_len)
    last = np.minimum(first + track_len, n) - 1
    cam = data["camera"][first]
    return dict(
        feat=feat,
        camera=cam,
        start=data["ts"][first],
        end=data["ts"][last],
        key=[f"{c}:{t}" for c, t in zip(cam, data["track"][first])],
    )


def store_uri(args, folder: str) -> str:
    """The store of this child's backend."""
    if args.backend == "milvus":
        return f"milvus://{folder}/store.db"
    if args.backend == "milvus-server":
        sep = "&" if "?" in args.server_uri else "?"
        opts = f"{sep}{args.server_options}" if args.server_options else ""
        return f"{args.server_uri}/bench_{os.getpid()}{opts}"
    return os.path.join(folder, "store")


def add_all(st, data: dict, args, a: int = 0, b: int = -1) -> float:
    """Add rows [a, b) in batches of ``--batch``; returns the seconds it took."""
    from partreid.store import CropBatch

    b = len(data["g"]) if b < 0 else b
    t = time.perf_counter()
    for i in range(a, b, args.batch):
        j = min(b, i + args.batch)
        st.add(
            CropBatch(
                ids=np.arange(i, j),
                features=data["g"][i:j].astype(np.float32),
                camera=data["camera"][i:j],
                timestamp=data["ts"][i:j],
                track_id=data["track"][i:j],
                frame=np.arange(i, j) % args.track_len,
                path=[f"cam{c}.mp4" for c in data["camera"][i:j]],
            )
        )
    return time.perf_counter() - t


def timed_searches(st, data: dict, tr: dict, args) -> dict:
    """p50/p99 at batch 1 and recall@10 for each filter kind, by crop and by tracklet."""
    out = {}
    q = data["q"].astype(np.float32)
    nq = min(len(q), args.single)
    n_all = min(nq, 20)
    ref_all = exact_unfiltered(data, tr, q[:n_all], 10)
    for by in ("crop", "tracklet"):
        for name in FILTERS:
            times, rec = [], []
            for i in range(nq if name else n_all):
                flt = data["f"][i][name] if name else {}
                t = time.perf_counter()
                hits = st.search(q[i : i + 1], 10, by=by, **flt)[0]
                times.append(time.perf_counter() - t)
                ref = exact(data, by, q[i], flt, 10, tr) if name else ref_all[by][i]
                got = [h.id if by == "crop" else h.tracklet for h in hits]
                if ref:
                    rec.append(len(set(ref) & set(got)) / len(ref))
            key = f"{by}/{name or 'all'}"
            print(key, file=sys.stderr, flush=True)
            out[key] = {
                "p50_ms": pct(times, 50),
                "p99_ms": pct(times, 99),
                "recall@10": float(np.mean(rec)) if rec else None,
            }
    return out


def run_backend(args) -> dict:
    """Everything measured for one backend (runs in a child process)."""
    from partreid.store import open_store

    if args.backend == "milvus" and args.lite_n:
        args.n = min(args.n, args.lite_n)
    t = time.perf_counter()
    data = synth(args)
    tr = tracklets(data, args.track_len)
    out = {"backend": args.backend, "n": args.n, "dim": args.dim, "gen_s": time.perf_counter() - t}
    folder = tempfile.mkdtemp(prefix="store_speed_", dir=args.dir)
    uri = store_uri(args, folder)
    try:
        st = open_store(uri, create=True, info={"dim": args.dim, "model": {"name": "synthetic"}})
        out["add_s"] = add_all(st, data, args)
        out["add_crops_per_s"] = args.n / out["add_s"]
        print(f"added in {out['add_s']:.1f} s", file=sys.stderr, flush=True)
        if hasattr(st, "wait_indexed") and args.backend == "milvus-server":
            out["index"] = st.wait_indexed()
            out["index_spec"] = st.index.record()
        st.close()
        t = time.perf_counter()
        st = open_store(uri)
        out["reopen_s"] = time.perf_counter() - t
        q = data["q"].astype(np.float32)
        t = time.perf_counter()
        st.search(q[:1], 10)  # builds the in-memory crop index (embedded)
        st.search(q[:1], 10, by="tracklet")
        out["first_search_s"] = time.perf_counter() - t
        out.update(timed_searches(st, data, tr, args))
        t = time.perf_counter()
        s = st.stats()
        out["stats"] = {"s": time.perf_counter() - t, "crops": s.crops, "tracklets": s.tracklets}
        t = time.perf_counter()
        nd = st.delete(before=T0 + DAY)
        out["delete_day"] = {"crops": nd, "s": time.perf_counter() - t}
        st.close()
        if args.backend != "milvus-server":
            du = subprocess.run(["du", "-sb", folder], capture_output=True, text=True)
            out["disk_gb"] = int(du.stdout.split()[0]) / 1e9
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out["peak_rss_gb"] = rss_gb()[1]
    return out


def worker_data(args, w: int) -> dict:
    """Writer ``w``'s crops of a ``--worker-n`` gallery: cameras ``c % workers == w``."""
    n, d = args.worker_n, args.dim
    rng = np.random.default_rng(1000 + w)
    track = np.arange(n) // args.track_len
    camera = (track * 7919) % args.cameras
    mine = np.nonzero(camera % args.workers == w)[0]
    g = rng.normal(size=(len(mine), d)).astype(np.float16)
    ts = T0 + track[mine] * 10.0 + np.arange(n)[mine] % args.track_len
    return dict(g=g, ids=mine, camera=camera[mine], ts=ts, track=track[mine])


def worker_main(args) -> dict:
    """One writer process: wait for the common start, add its crops, say when it ended."""
    from partreid.store import CropBatch, open_store

    data = worker_data(args, args.worker)
    st = open_store(args.store)
    time.sleep(max(0.0, args.start_at - time.time()))
    t = time.time()
    for i in range(0, len(data["g"]), args.batch):
        sl = slice(i, i + args.batch)
        st.add(
            CropBatch(
                ids=data["ids"][sl],
                features=data["g"][sl].astype(np.float32),
                camera=data["camera"][sl],
                timestamp=data["ts"][sl],
                track_id=data["track"][sl],
            )
        )
    end = time.time()
    st.close()
    return {"start": t, "end": end, "crops": len(data["g"])}


def run_workers(args, workers: int) -> dict:
    """``workers`` writer processes into one new server store at once; checks every crop and
    tracklet arrived once."""
    from partreid.store import open_store

    uri = f"{args.server_uri}/workers{workers}_{os.getpid()}?{args.server_options}"
    with open_store(uri, create=True, info={"dim": args.dim}):
        pass
    start_at = time.time() + 15.0  # every process imported and connected by then
    base = [sys.executable, __file__, *sys.argv[1:], "--store", uri, "--workers", str(workers)]
    base += ["--start-at", str(start_at)]
    procs = [
        subprocess.Popen(base + ["--worker", str(w)], stdout=subprocess.PIPE, text=True)
        for w in range(workers)
    ]
    res = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    wall = max(r["end"] for r in res) - min(r["start"] for r in res)
    with open_store(uri) as st:
        s = st.stats()
    ntr = -(-args.worker_n // args.track_len)
    return {
        "workers": workers,
        "crops_per_s": args.worker_n / wall,
        "wall_s": wall,
        "all_once": s.crops == args.worker_n and s.tracklets == ntr,
    }


def start_server(args):
    """A Milvus standalone from the wheel in a temporary folder (None when given a URI)."""
    if args.server_uri:
        return None
    from partreid.store.milvus_server import LocalMilvus

    srv = LocalMilvus(tempfile.mkdtemp(prefix="store_speed_milvus_", dir=args.dir)).start()
    args.server_uri = f"milvus://127.0.0.1:{srv.port}"
    return srv


def server_rss_gb(srv) -> float:
    """The started server's peak resident set size (GB; 0 when not ours)."""
    if srv is None or srv.pid is None:
        return 0.0
    with open(f"/proc/{srv.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def report(res: dict, args) -> None:
    """The figures of one backend."""
    extra = ""
    if "index" in res:
        extra = (
            f"  index {res['index_spec']} built in {res['index']['seconds']:.0f} s after the adds"
        )
    print(
        f"\n== {res['backend']}: N={res['n']:,} dim={res['dim']}  add {res['add_crops_per_s']:,.0f}"
        f" crops/s ({res['add_s']:.1f} s)  reopen {res['reopen_s']:.2f} s  first searches"
        f" {res['first_search_s']:.2f} s{extra}"
    )
    for key, v in res.items():
        if isinstance(v, dict) and "p50_ms" in v:
            rec = v["recall@10"]
            flag = "" if rec is None or rec >= args.recall else f"  BELOW the asked {args.recall}"
            rs = "-" if rec is None else f"{rec:.3f}"
            print(
                f"  {key:20s} p50 {v['p50_ms']:8.1f} ms  p99 {v['p99_ms']:8.1f} ms"
                f"  recall@10 {rs}{flag}"
            )
    d, s = res["delete_day"], res["stats"]
    print(
        f"  stats {s['s'] * 1000:.0f} ms ({s['crops']:,} crops, {s['tracklets']:,} tracklets);"
        f" delete first day: {d['crops']:,} crops in {d['s']:.2f} s;"
        f" peak RSS {res['peak_rss_gb']:.2f} GB"
        + (f"; server peak RSS {res['server_rss_gb']:.2f} GB" if res.get("server_rss_gb") else "")
    )
    if res["backend"] == "milvus-server":
        filtered = [res[f"{b}/{f}"] for b in ("crop", "tracklet") for f in FILTERS[:2]]
        met = all(v["p99_ms"] < 50 and (v["recall@10"] or 0) >= 0.95 for v in filtered)
        print(f"  goal (filtered p99 < 50 ms at recall@10 >= 0.95): {'met' if met else 'NOT met'}")
    print("  " + json.dumps(res), flush=True)


def parse_args(argv=None):
    """The options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--backends", nargs="+", default=["embedded", "milvus", "milvus-server"])
    p.add_argument("--lite-n", type=int, default=0, help="at most this many crops in Lite")
    p.add_argument("--server-uri", default="", help="milvus://[user:pw@]host:port (else started)")
    p.add_argument("--server-options", default=SERVER_OPTIONS, help="the store URI's options")
    p.add_argument("--workers", type=int, nargs="*", default=[], help="writer counts to time")
    p.add_argument("--worker-n", type=int, default=100000, help="crops in each workers' run")
    p.add_argument("--recall", type=float, default=0.95, help="the recall@10 asked for")
    p.add_argument("--cameras", type=int, default=200)
    p.add_argument("--days", type=float, default=30.0)
    p.add_argument("--views", type=int, default=8, help="crops per identity")
    p.add_argument("--track-len", type=int, default=4, help="crops per track")
    p.add_argument("--batch", type=int, default=1000, help="crops per add")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--single", type=int, default=100, help="queries timed per filter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="where the stores are written (temporary)")
    for hidden in ("--backend", "--store", "--worker", "--start-at"):  # a child's own
        p.add_argument(hidden, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    """Run each backend in its own process, then the writers, and print the figures."""
    args = parse_args()
    if args.worker is not None:
        args.worker, args.start_at, args.workers = (
            int(args.worker),
            float(args.start_at),
            int(args.workers[0]),
        )
        print(json.dumps(worker_main(args)))
        return
    if args.backend:
        print(json.dumps(run_backend(args)))
        return
    srv = start_server(args) if "milvus-server" in args.backends or args.workers else None
    try:
        for b in args.backends:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--backend", b]
            cmd += ["--server-uri", args.server_uri] if args.server_uri else []
            r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            if r.returncode:
                print(f"{b}: failed (status {r.returncode})", flush=True)
                continue
            res = json.loads(r.stdout.strip().splitlines()[-1])
            res["server_rss_gb"] = server_rss_gb(srv) if b == "milvus-server" else 0.0
            report(res, args)
        for w in args.workers:
            r = run_workers(args, w)
            print(
                f"\n== {w} writer process(es) into one server store: {r['crops_per_s']:,.0f}"
                f" crops/s ({args.worker_n:,} crops in {r['wall_s']:.1f} s); every crop and"
                f" tracklet once: {r['all_once']}",
                flush=True,
            )
    finally:
        if srv is not None:
            srv.stop()


if __name__ == "__main__":
    main()
