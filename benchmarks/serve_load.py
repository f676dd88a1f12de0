"""Bounded load test of ``partreid serve`` on 127.0.0.1: requests/s, p50/p99 latency, errors.

For each gallery (N synthetic features clustered around the demo model's features of generated
crops, see gallery_basis) it starts ``python -m partreid serve`` on 127.0.0.1 and a free port,
then runs C concurrent clients for a fixed time, each uploading real JPEG crops (generated
pedestrians) to ``POST /api/search`` one after the other; then it stops the server. It never talks to any other address.

    python benchmarks/serve_load.py                              # 10k and 100k exact, 8 clients
    python benchmarks/serve_load.py --sizes 100000 --kind ivfflat --refine 100 --clients 1 8
    python benchmarks/serve_load.py --mode store --sizes 20000 --seconds 15 --runtimes torch

Store mode (``--mode store``) serves a store (``--sizes[0]`` synthetic crops on six cameras
over a day, plus ingested ones) and runs the C clients three times -- alone, while a second
process ingests ``--ingest-crops`` crops into the same store (``partreid ingest``), and while
schemathesis fuzzes every route but deletion -- alternating uploads and tracklet searches with
camera and time filters. It prints p50/p99 per phase, the errors, the store's crops before and
after the ingest (nothing lost: all of them, seen by the server without a restart), the fuzzer's
cases and failures, and whether the server is still alive.

The model is the demo's CGPN (ResNet-18, 64x32), untrained: speed does not depend on the
weights. ``--threads`` sets the server's torch/OpenMP threads (the clients share the machine);
``--runtimes`` the server's model runtime(s) (default auto: ONNX Runtime on an export made once,
in the work folder's cache, so the first start takes longer). The last three columns come from
the server's worker counters (``/api/health``): queries per forward pass and time per batch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

HOST = "127.0.0.1"  # fixed: this load test only ever targets the local machine


def make_checkpoint(path: str) -> str:
    """The demo's CGPN (ResNet-18, 64x32), untrained, saved as a partreid checkpoint (kept when
    ``path`` exists, so a ``--workdir`` reuses the server's cached ONNX export)."""
    import torch

    if os.path.isfile(path):
        return path
    from partreid.checkpoint import model_meta, save_checkpoint
    from partreid.config import build_config
    from partreid.demo import demo_config
    from partreid.models import build_model

    cfg = build_config(demo_config(os.path.dirname(path)))
    torch.manual_seed(0)
    kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
    model = build_model(cfg.model["name"], 100, **kwargs)
    save_checkpoint(path, model.state_dict(), model_meta(cfg, model, 100))
    return path


def gallery_basis(ckpt: str, root: str) -> np.ndarray:
    """The model's features of the generated data set's gallery and training crops: the
    synthetic gallery is built around them, so the queries' neighbourhoods look like a real
    gallery's to an index (random vectors would leave the queries far from every IVF cell)."""
    from partreid.inference import Extractor

    files = [
        os.path.join(root, sub, f)
        for sub in ("bounding_box_test", "bounding_box_train")
        for f in sorted(os.listdir(os.path.join(root, sub)))
    ]
    return Extractor(ckpt, device="cpu", progress=False, num_workers=0)(files)


def make_gallery(
    path: str, n: int, basis: np.ndarray, kind: str, seed: int = 0, **index_params
) -> str:
    """N features in identity clusters around the model's features of real-looking crops
    (``basis``; 20 items per identity), as a features file, or an index folder."""
    from partreid.features import Features

    rng = np.random.default_rng(seed)
    dim = basis.shape[1]
    scale = float(basis.std(0).mean())  # typical per-dimension spread of the model's features
    ids = max(1, n // 20)
    centers = basis[np.arange(ids) % len(basis)] + 0.5 * scale * rng.standard_normal(
        (ids, dim), dtype=np.float32
    )
    pids = rng.integers(0, ids, n)
    feats = np.empty((n, dim), np.float32)
    for a in range(0, n, 8192):  # in blocks: no second full-size temporary
        b = min(n, a + 8192)
        noise = rng.standard_normal((b - a, dim), dtype=np.float32)
        feats[a:b] = centers[pids[a:b]] + 0.25 * scale * noise
    fs = Features.build(
        feats,
        [f"/nonexistent/gallery/{i:07d}.jpg" for i in range(n)],
        pids=pids,
        camids=rng.integers(0, 6, n),
        meta={"distance": "euclidean", "normalize": False},
    )
    if kind == "exact":
        return fs.save(path + ".npz")
    from partreid.index import GalleryIndex

    return GalleryIndex.build(fs, kind=kind, **index_params).save(path + f".{kind}")


def query_images(count: int, root: str) -> List[bytes]:
    """JPEG bytes of generated pedestrian crops (the demo data's query images)."""
    from partreid.data import generate_synthetic

    generate_synthetic(root, num_ids=20, test_fraction=0.5, num_cams=2, height=64, width=32)
    folder = os.path.join(root, "query")
    files = sorted(os.listdir(folder))[:count]
    out = []
    for f in files:
        with open(os.path.join(folder, f), "rb") as fh:
            out.append(fh.read())
    return out


def recall_at_10(ckpt: str, index_path: str, images: List[bytes]) -> float:
    """Recall@10 of the served approximate index against exact search on its own vectors, for
    the benchmark's query images (features from the same model)."""
    import io

    from PIL import Image

    from partreid.index import GalleryIndex
    from partreid.inference import Extractor

    q = Extractor(ckpt, device="cpu", progress=False)(
        [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    )
    index = GalleryIndex.load(index_path)
    _, approx = index.search(q, topk=10)
    exact = GalleryIndex.build(index.features, kind="exact")
    _, truth = exact.search(q, topk=10)
    hits = [len(set(a.tolist()) & set(t.tolist())) for a, t in zip(approx, truth)]
    return float(np.mean(hits)) / 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(
    ckpt: str,
    gallery: str,
    port: int,
    threads: int,
    log_path: str,
    runtime: str,
    cache: str,
    store: bool = False,
):
    """``partreid serve`` in a child process (over the gallery, or the store ``gallery`` when
    ``store``); returns it once /api/health answers."""
    import httpx

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "partreid", "serve", ckpt, "--store" if store else "--gallery"]
    cmd += [gallery]
    cmd += ["--host", HOST, "--port", str(port), "--device", "cpu", "--runtime", runtime]
    cmd += ["--cache", cache]
    with open(log_path, "w") as log:  # the child keeps its own handle
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://{HOST}:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the server did not start within 600 s; see {log_path}")


def gallery_request(port: int, images: List[bytes]) -> Callable:
    """The gallery load: upload crop ``i`` to ``POST /api/search``; ok with 10 results."""
    url = f"http://{HOST}:{port}/api/search?topk=10"

    async def send(http, i: int) -> bool:
        img = images[i % len(images)]
        r = await http.post(url, files={"image": (f"q{i}.jpg", img, "image/jpeg")})
        return r.status_code == 200 and len(r.json()["results"]) == 10, r.status_code

    return send


def stop(proc: subprocess.Popen) -> None:
    """Stop a child process: terminate, then kill after 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def load(
    port: int,
    images: List[bytes],
    clients: int,
    seconds: float,
    warmup: float,
    send: Optional[Callable] = None,
):
    """C clients sending requests back to back for ``warmup + seconds`` (``send(http, i)`` ->
    (ok, status); default: gallery uploads); stats of the last part."""
    import httpx

    send = send or gallery_request(port, images)
    lat: List[float] = []
    errors: Dict[str, int] = {}
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + seconds

    async def client(c: int, http):
        i = c
        while True:
            now = time.perf_counter()
            if now >= t_end:
                return
            t0 = time.perf_counter()
            try:
                ok, status = await send(http, i)
                why = "" if ok else f"HTTP {status}"
            except Exception as exc:  # counted, never hidden
                ok, why = False, type(exc).__name__
            t1 = time.perf_counter()
            i += clients
            if t0 >= t_measure:
                if ok:
                    lat.append(t1 - t0)
                else:
                    errors[why] = errors.get(why, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        await asyncio.gather(*(client(c, http) for c in range(clients)))
    return np.asarray(lat), errors


# ------------------------------------------------------------------------------ store mode

T0 = 1796256000.0  # 2026-12-03T00:00:00Z: the synthetic store's day
STORE_PHASES = ("alone", "while ingesting", "while fuzzing")


def make_store(ckpt: str, root: str, basis: np.ndarray, n: int, seed: int = 0) -> str:
    """A store of the model: the generated crops ingested as ``partreid ingest`` does (so it
    records the model), then ``n`` synthetic crops around the model's features on cameras 1-6
    over one day, in tracklets of 5 crops."""
    from partreid.commands.ingest import ingest_command
    from partreid.store import CropBatch, open_store

    store = os.path.join(root, "store")
    seed_csv = ingest_manifest(root, "seed.csv", 40, camera=9, t0=T0)
    ingest_command(ckpt, seed_csv, store, device="cpu", num_workers=0, progress=False)
    rng = np.random.default_rng(seed)
    scale = float(basis.std(0).mean())
    with open_store(store) as st:
        for a in range(0, n, 8192):
            m = min(n, a + 8192) - a
            ids = np.arange(a, a + m) + 10**12  # apart from ingest's hashed ids
            track = (ids - 10**12) // 5
            base = basis[track % len(basis)]
            feats = base + 0.25 * scale * rng.standard_normal(base.shape, dtype=np.float32)
            st.add(
                CropBatch(
                    ids=ids,
                    features=feats,
                    camera=1 + track % 6,
                    timestamp=T0 + track * (86400.0 * 5 / n) + (ids % 5),  # over the day
                    track_id=track,
                    path=["/nonexistent/synthetic.jpg"] * m,
                )
            )
    return store


def ingest_manifest(root: str, name: str, count: int, camera: int, t0: float) -> str:
    """A timed manifest of ``count`` crops of the generated images (repeated with new frame
    numbers, so each is a new crop) for one camera, from ``t0`` on, 10 per second."""
    folder = os.path.join(root, "queries", "bounding_box_test")
    files = sorted(os.listdir(folder))
    rows = ["image,timestamp,camera,track_id,frame,pid"]
    for k in range(count):
        img = os.path.join(folder, files[k % len(files)])
        rows.append(f"{img},{t0 + k / 10:.3f},{camera},{k // 10},{k},-1")
    path = os.path.join(root, name)
    with open(path, "w") as f:
        f.write("\n".join(rows) + "\n")
    return path


def store_request(port: int, images: List[bytes], tracklets: List[str]) -> Callable:
    """The store load, alternating: an uploaded crop (tracklets of cameras 1-6 over the day)
    and a stored tracklet's search (crops of cameras 1-3 in the afternoon); ok with results."""
    base = f"http://{HOST}:{port}/api/store"
    day = "after=2026-12-03T00:00Z&before=2026-12-04T00:00Z"

    async def send(http, i: int) -> Tuple[bool, int]:
        if i % 2 == 0:
            img = images[i % len(images)]
            url = f"{base}/search?topk=10&cameras=1-6&{day}"
            r = await http.post(url, files={"image": (f"q{i}.jpg", img, "image/jpeg")})
        else:
            t = tracklets[i % len(tracklets)]
            url = f"{base}/search_tracklet?tracklet={t}&by=crop&cameras=1-3&after=2026-12-03T12:00Z"
            r = await http.get(url)
        return r.status_code == 200 and len(r.json()["results"]) > 0, r.status_code

    return send


def store_crops(port: int) -> int:
    """The crops the server's store holds now (it sees other processes' commits)."""
    import httpx

    return int(httpx.get(f"http://{HOST}:{port}/api/store/stats", timeout=30).json()["crops"])


def start_ingest(ckpt: str, manifest: str, store: str, log_path: str) -> subprocess.Popen:
    """``partreid ingest`` of ``manifest`` into ``store`` in a second process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "partreid", "ingest", ckpt, manifest, "--store", store]
    cmd += ["--device", "cpu", "--no-progress"]
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def start_fuzzer(port: int, seconds: float, report: str, log_path: str) -> subprocess.Popen:
    """schemathesis over every route but deletion, for about ``seconds``, images of the fuzz
    tests' hooks (tests/serve/fuzz_hooks.py); only 127.0.0.1."""
    here = os.path.dirname(os.path.abspath(__file__))
    hooks = os.path.join(here, os.pardir, "tests", "serve")
    env = dict(os.environ, SCHEMATHESIS_HOOKS="fuzz_hooks")
    env["PYTHONPATH"] = os.pathsep.join([hooks, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"http://{HOST}:{port}/openapi.json"]
    cmd += ["--phases", "examples,coverage,fuzzing", "--checks", "not_a_server_error"]
    cmd += ["--max-time", str(int(seconds)), "-n", "100000", "-w", "1", "--seed", "22"]
    cmd += ["--exclude-path", "/api/store/delete", "--generation-database", "none"]
    cmd += ["--report", "json", "--report-json-path", report, "--no-color"]
    with open(log_path, "w") as log:  # in the work folder: schemathesis caches where it runs
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=os.path.dirname(report)
        )


def worker_stats(port: int) -> Dict[str, float]:
    """The server's worker counters (``/api/health``: batches, queries, seconds)."""
    import httpx

    return httpx.get(f"http://{HOST}:{port}/api/health", timeout=10).json()["worker"]


def store_phase(name: str, port: int, send: Callable, args, background=None) -> Dict:
    """One measured phase: C clients for ``args.seconds`` (after the warm-up) while
    ``background`` (a started process, or None) runs; latencies, errors, its run time."""
    t0 = time.time()
    lat, errors = asyncio.run(load(port, [], args.clients[0], args.seconds, args.warmup, send))
    bg_s = None
    if background is not None:
        try:
            background.wait(timeout=600)
        except subprocess.TimeoutExpired:
            background.kill()
        bg_s = time.time() - t0
    p50, p99 = (np.percentile(lat, [50, 99]) * 1000) if len(lat) else (np.nan, np.nan)
    return {
        "phase": name,
        "n": len(lat),
        "errors": errors,
        "p50": p50,
        "p99": p99,
        "max": lat.max() * 1000 if len(lat) else np.nan,
        "background_s": bg_s,
        "background_rc": None if background is None else background.returncode,
    }


def store_row(r: Dict, args, crops: str, note: str) -> str:
    """A markdown row of a phase."""
    n_err = sum(r["errors"].values())
    err = f"{n_err} {r['errors']}" if n_err else "0"
    return (
        f"| {r['phase']} | {args.clients[0]} | {r['n'] + n_err} | {r['n'] / args.seconds:.1f} | "
        f"{r['p50']:.0f} | {r['p99']:.0f} | {r['max']:.0f} | {err} | {crops} | {note} |"
    )


def store_main(args, work: str, ckpt: str, images: List[bytes], basis: np.ndarray) -> None:
    """Store mode: p50/p99 of C clients alone, while a second process ingests into the same
    store, and while a fuzzer runs; nothing lost, the server alive."""
    n = args.sizes[0]
    t0 = time.time()
    store = make_store(ckpt, work, basis, n)
    tracklets = [f"{1 + t % 6}:{t}" for t in range(0, n // 5, max(1, n // 500))]
    extra = ingest_manifest(work, "camera7.csv", args.ingest_crops, camera=7, t0=T0 + 43200)
    port = free_port()
    proc = start_server(
        ckpt,
        store,
        port,
        args.threads,
        os.path.join(work, "server_store.log"),
        args.runtimes[0],
        os.path.join(work, "cache"),
        store=True,
    )
    print(
        f"#   store of {n:,} synthetic + 40 ingested crops built and served in "
        f"{time.time() - t0:.0f} s; the second process ingests {args.ingest_crops} crops"
    )
    print(
        "| phase | clients | requests | req/s | p50 ms | p99 ms | max ms | errors | crops | "
        "beside |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    send = store_request(port, images, tracklets)
    try:
        before = store_crops(port)
        r = store_phase(STORE_PHASES[0], port, send, args)
        print(store_row(r, args, f"{before:,}", "-"), flush=True)
        ing = start_ingest(ckpt, extra, store, os.path.join(work, "ingest.log"))
        r = store_phase(STORE_PHASES[1], port, send, args, ing)
        after = store_crops(port)
        lost = before + args.ingest_crops - after
        note = f"ingest rc {r['background_rc']} in {r['background_s']:.0f} s; lost {lost}"
        print(store_row(r, args, f"{before:,} -> {after:,}", note), flush=True)
        report = os.path.join(work, "fuzz.json")
        fz = start_fuzzer(port, args.seconds + args.warmup, report, os.path.join(work, "fuzz.log"))
        r = store_phase(STORE_PHASES[2], port, send, args, fz)
        print(store_row(r, args, f"{store_crops(port):,}", fuzz_note(report)), flush=True)
        alive = proc.poll() is None and worker_stats(port) is not None
        print(f"#   server alive after all phases: {alive}; nothing lost: {lost == 0}")
    finally:
        stop(proc)


def fuzz_note(report: str) -> str:
    """The fuzzer's case count and failures (its JSON report)."""
    import json

    if not os.path.isfile(report):
        return "fuzzer: no report (is schemathesis installed?)"
    with open(report) as f:
        rep = json.load(f)
    cases = rep["test_cases"]
    return f"fuzzer: {cases['generated']} cases, {cases['with_failures']} failing"


def parse_args() -> argparse.Namespace:
    """The command line (bounded: 1..64 clients, at most 600 s a run)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--kind", default="exact", help="gallery index: exact, ivfpq, hnsw, ...")
    ap.add_argument("--clients", type=int, nargs="+", default=[8])
    ap.add_argument("--seconds", type=float, default=20.0, help="measured time per run")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured time before it")
    ap.add_argument(
        "--refine",
        type=int,
        help="approximate kinds: shortlist = refine x top-K, re-ordered exactly (index default)",
    )
    ap.add_argument("--threads", type=int, default=2, help="server torch/OpenMP threads")
    ap.add_argument(
        "--runtimes",
        nargs="+",
        default=["auto"],
        help="server model runtimes to compare (auto, onnx, torch), one server each in turn",
    )
    ap.add_argument("--workdir", default=None, help="keep the files here (default: a tmp dir)")
    ap.add_argument(
        "--mode",
        choices=["gallery", "store"],
        default="gallery",
        help="store: serve a store of --sizes[0] crops; alone, beside an ingest, beside a fuzzer",
    )
    ap.add_argument("--ingest-crops", type=int, default=400, help="store mode: crops ingested")
    args = ap.parse_args()
    if any(c < 1 or c > 64 for c in args.clients) or not 0 < args.seconds <= 600:
        ap.error("clients must be 1..64 and seconds 0..600")
    if not 1 <= args.ingest_crops <= 100_000 or not all(1 <= n <= 10**7 for n in args.sizes):
        ap.error("--ingest-crops must be 1..100000 and --sizes 1..10^7")
    return args


def main() -> None:
    args = parse_args()

    import httpx
    import torch

    torch.set_num_threads(1)
    work = args.workdir or tempfile.mkdtemp(prefix="partreid_serve_load_")
    os.makedirs(work, exist_ok=True)
    ckpt = make_checkpoint(os.path.join(work, "cgpn_demo_untrained.pth"))
    from partreid.inference import load_model

    dim = load_model(ckpt).info.feature_dim
    images = query_images(40, os.path.join(work, "queries"))
    basis = gallery_basis(ckpt, os.path.join(work, "queries"))
    print(
        f"# CGPN ResNet-18 64x32 (untrained), {dim}-d; server threads {args.threads}; "
        f"{len(images)} distinct JPEG queries; {args.seconds:.0f} s measured after "
        f"{args.warmup:.0f} s warm-up; cpu count {os.cpu_count()}"
    )
    if args.mode == "store":
        store_main(args, work, ckpt, images, basis)
        return
    print(
        "| gallery | index | runtime | clients | requests | req/s | p50 ms | p99 ms | max ms "
        "| errors | mean batch | model ms/batch | search ms/batch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        t0 = time.time()
        extra = {"refine": args.refine} if args.refine else {}
        gallery = make_gallery(os.path.join(work, f"gallery_{n}"), n, basis, args.kind, **extra)
        built = time.time() - t0
        recall = (
            "" if args.kind == "exact" else f", recall@10 {recall_at_10(ckpt, gallery, images):.3f}"
        )
        ready: List[str] = []
        for rt in args.runtimes:
            port = free_port()
            log_path = os.path.join(work, f"server_{n}_{rt}.log")
            t0 = time.time()
            cache = os.path.join(work, "cache")
            proc = start_server(ckpt, gallery, port, args.threads, log_path, rt, cache)
            started = time.time() - t0
            ready.append(f"{rt} {started:.1f} s")
            runtime = httpx.get(f"http://{HOST}:{port}/api/health").json()["model"]["runtime"]
            try:
                for c in args.clients:
                    w0 = worker_stats(port)
                    lat, errors = asyncio.run(load(port, images, c, args.seconds, args.warmup))
                    w = {k: v - w0[k] for k, v in worker_stats(port).items() if k in w0}
                    per = max(1, w["batches"])
                    n_err = sum(errors.values())
                    p50, p99 = (np.percentile(lat, [50, 99]) * 1000) if len(lat) else (np.nan,) * 2
                    mx = lat.max() * 1000 if len(lat) else float("nan")
                    err = f"{n_err} {errors}" if n_err else "0"
                    print(
                        f"| {n:,} | {args.kind} | {runtime} | {c} | {len(lat) + n_err} | "
                        f"{len(lat) / args.seconds:.1f} | {p50:.0f} | {p99:.0f} | {mx:.0f} | {err} | "
                        f"{w['queries'] / per:.1f} | {1000 * w['model_s'] / per:.0f} | "
                        f"{1000 * w['search_s'] / per:.0f} |",
                        flush=True,
                    )
            finally:
                stop(proc)
        print(
            f"#   gallery {n:,}: built in {built:.1f} s{recall}; server ready: {', '.join(ready)}"
        )
        if not args.workdir:
            for f in (gallery,):
                if os.path.isfile(f):
                    os.remove(f)


if __name__ == "__main__":
    main()
