"""Gallery store speed (partreid.store): add rate, filtered search latency and recall, delete.

    python benchmarks/store_speed.py                          # smoke run: 20k crops, both backends
    nice -n 10 python benchmarks/store_speed.py --n 200000 --dim 1280 --backends embedded milvus
    nice -n 10 python benchmarks/store_speed.py --n 1000000 --dim 1280 --backends embedded

The synthetic crops are ``search_speed.generate``'s Re-ID-like gallery (the ``measured``
spectrum, imported from benchmarks/search_speed.py, not copied): identities of ``--views``
views; each identity's views are cut into tracks of ``--track-len`` crops, each track in one of
``--cameras`` cameras (random), starting at a random time within ``--days`` days, one crop per
second. Queries are further views of random gallery identities; each is searched with two
filters around one of its own identity's tracks: (its camera, a 2-hour window) and (its camera
+ 9 random others, one day), by crop and by tracklet.

Printed per backend (each in its own child process, so the peak RSS is its own): add rate
(batches of ``--batch``), the time to build the in-memory index on the first search after
opening, search p50/p99 at batch 1 for each filter and an unfiltered crop search, recall@10
against exact numpy on the same filtered subset, delete of the first day's crops, and the
peak RSS. Nothing is asserted.

Memory: the gallery is held as float16 (N x D x 2 bytes: 2.6 GB at 1M x 1,280); the embedded
store adds its in-memory faiss IndexFlatIP (N x D x 4: 5.1 GB) and the tracklet matrix
(N / track-len x D x 4: 1.3 GB) and writes N x D x 4 bytes of vectors plus N / track-len x D x 8
bytes of tracklet sums (SQLite) to disk, under ``--dir`` (default: a temporary folder).
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


def exact(data: dict, by: str, query: np.ndarray, flt: dict, k: int, tr: dict) -> list:
    """Exact filtered top-k ids (crop ids or tracklet ids) with numpy."""
    qn = query.astype(np.float32) / np.linalg.norm(query)
    if by == "crop":
        ok = np.isin(data["camera"], flt["cameras"])
        ok &= (data["ts"] >= flt["after"]) & (data["ts"] < flt["before"])
        idx = np.nonzero(ok)[0]
        g = data["g"][idx].astype(np.float32)
        s = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ qn
        return [int(idx[i]) for i in np.argsort(-s, kind="stable")[:k]]
    ok = np.isin(tr["camera"], flt["cameras"]) & (tr["end"] >= flt["after"])
    ok &= tr["start"] < flt["before"]
    idx = np.nonzero(ok)[0]
    s = tr["feat"][idx] @ qn
    return [tr["key"][i] for i in idx[np.argsort(-s, kind="stable")[:k]]]


def tracklets(data: dict, track_len: int) -> dict:
    """Per track: key, camera, span and the normalised mean of the normalised crop features."""
    n, d = data["g"].shape
    ntr = -(-n // track_len)
    feat = np.zeros((ntr, d), np.float32)
    for a in range(0, n, 65536 * track_len // track_len):
        b = min(n, a + 65536)
        x = data["g"][a:b].astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        np.add.at(feat, data["track"][a:b], x)
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


def run_backend(args) -> dict:
    """Everything measured for one backend (runs in a child process)."""
    from partreid.store import CropBatch, open_store

    t = time.perf_counter()
    data = synth(args)
    tr = tracklets(data, args.track_len)
    out = {"backend": args.backend, "n": args.n, "dim": args.dim, "gen_s": time.perf_counter() - t}
    folder = tempfile.mkdtemp(prefix="store_speed_", dir=args.dir)
    uri = os.path.join(folder, "store")
    if args.backend == "milvus":
        uri = f"milvus://{folder}/store.db"
    try:
        st = open_store(uri, create=True, info={"dim": args.dim, "model": {"name": "synthetic"}})
        t = time.perf_counter()
        for a in range(0, args.n, args.batch):
            b = min(args.n, a + args.batch)
            st.add(
                CropBatch(
                    ids=np.arange(a, b),
                    features=data["g"][a:b].astype(np.float32),
                    camera=data["camera"][a:b],
                    timestamp=data["ts"][a:b],
                    track_id=data["track"][a:b],
                    frame=np.arange(a, b) % args.track_len,
                    path=[f"cam{c}.mp4" for c in data["camera"][a:b]],
                )
            )
        add_s = time.perf_counter() - t
        t0 = time.perf_counter()
        print(f"added in {add_s:.1f} s", file=sys.stderr, flush=True)
        out["add_crops_per_s"] = args.n / add_s
        out["add_s"] = add_s
        st.close()
        t = time.perf_counter()
        st = open_store(uri)
        out["reopen_s"] = time.perf_counter() - t
        q = data["q"].astype(np.float32)
        t = time.perf_counter()
        st.search(q[:1], 10)  # builds the in-memory crop index (embedded)
        out["first_crop_search_s"] = time.perf_counter() - t
        t = time.perf_counter()
        st.search(q[:1], 10, by="tracklet")
        out["first_tracklet_search_s"] = time.perf_counter() - t
        nq = min(len(q), args.single)
        for by in ("crop", "tracklet"):
            for name in ("cam_2h", "cam10_day", None):
                if name is None and by == "tracklet" and args.n > 300000:
                    continue
                times, rec, sizes = [], [], []
                for i in range(nq if name else min(nq, 20)):
                    flt = data["f"][i][name] if name else {}
                    t = time.perf_counter()
                    hits = st.search(q[i : i + 1], 10, by=by, **flt)[0]
                    times.append(time.perf_counter() - t)
                    if name:
                        ref = exact(data, by, q[i], flt, 10, tr)
                        got = [h.id if by == "crop" else h.tracklet for h in hits]
                        sizes.append(len(ref))
                        if ref:
                            rec.append(len(set(ref) & set(got)) / len(ref))
                key = f"{by}/{name or 'all'}"
                print(key, f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
                out[key] = {
                    "p50_ms": pct(times, 50),
                    "p99_ms": pct(times, 99),
                    "recall@10": float(np.mean(rec)) if rec else None,
                }
        t = time.perf_counter()
        nd = st.delete(before=T0 + DAY)
        out["delete_day"] = {"crops": nd, "s": time.perf_counter() - t}
        st_after = st.stats()
        out["stats_after"] = {"crops": st_after.crops, "tracklets": st_after.tracklets}
        st.close()
        du = subprocess.run(["du", "-sb", folder], capture_output=True, text=True).stdout.split()
        out["disk_gb"] = int(du[0]) / 1e9 if du else None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out["peak_rss_gb"] = rss_gb()[1]
    return out


def main() -> None:
    """Run each backend in its own process and print the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--backends", nargs="+", default=["embedded", "milvus"])
    p.add_argument("--cameras", type=int, default=200)
    p.add_argument("--days", type=float, default=30.0)
    p.add_argument("--views", type=int, default=8, help="crops per identity")
    p.add_argument("--track-len", type=int, default=4, help="crops per track")
    p.add_argument("--batch", type=int, default=1000, help="crops per add")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--single", type=int, default=100, help="queries timed per filter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="where the stores are written (temporary)")
    p.add_argument("--backend", help=argparse.SUPPRESS)  # the child's one backend
    args = p.parse_args()
    if args.backend:
        print(json.dumps(run_backend(args)))
        return
    for b in args.backends:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--backend", b]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if r.returncode:
            print(f"{b}: failed (status {r.returncode})", flush=True)
            continue
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(
            f"\n== {b}: N={res['n']:,} dim={res['dim']}  add {res['add_crops_per_s']:,.0f} crops/s"
            f" ({res['add_s']:.1f} s)  reopen {res['reopen_s']:.2f} s  first search: crop"
            f" {res['first_crop_search_s']:.2f} s, tracklet {res['first_tracklet_search_s']:.2f} s"
        )
        for key, v in res.items():
            if isinstance(v, dict) and "p50_ms" in v:
                rec = "-" if v["recall@10"] is None else f"{v['recall@10']:.3f}"
                print(
                    f"  {key:22s} p50 {v['p50_ms']:8.1f} ms  p99 {v['p99_ms']:8.1f} ms  recall@10 {rec}"
                )
        d = res["delete_day"]
        print(
            f"  delete first day: {d['crops']:,} crops in {d['s']:.2f} s; after: {res['stats_after']};"
            f" disk {res['disk_gb']:.2f} GB; peak RSS {res['peak_rss_gb']:.2f} GB"
        )
        print("  " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
