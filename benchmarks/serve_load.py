"""Bounded load test of ``partreid serve`` on 127.0.0.1: requests/s, p50/p99 latency, errors.

For each gallery (N synthetic features clustered around the demo model's features of generated
crops, see gallery_basis) it starts ``python -m partreid serve`` on 127.0.0.1 and a free port,
then runs C concurrent clients for a fixed time, each uploading real JPEG crops (generated
pedestrians) to ``POST /api/search`` one after the other; then it stops the server. It never talks to any other address.

    python benchmarks/serve_load.py                              # 10k and 100k exact, 8 clients
    python benchmarks/serve_load.py --sizes 100000 --kind ivfflat --refine 100 --clients 1 8

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
from typing import Dict, List

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
    ckpt: str, gallery: str, port: int, threads: int, log_path: str, runtime: str, cache: str
):
    """``partreid serve`` in a child process; returns it once /api/health answers."""
    import httpx

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "partreid", "serve", ckpt, "--gallery", gallery]
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


async def load(port: int, images: List[bytes], clients: int, seconds: float, warmup: float):
    """C clients posting uploads back to back for ``warmup + seconds``; stats of the last part."""
    import httpx

    url = f"http://{HOST}:{port}/api/search?topk=10"
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
            img = images[i % len(images)]
            i += clients
            t0 = time.perf_counter()
            try:
                r = await http.post(url, files={"image": (f"q{i}.jpg", img, "image/jpeg")})
                ok = r.status_code == 200 and len(r.json()["results"]) == 10
                why = "" if ok else f"HTTP {r.status_code}"
            except Exception as exc:  # counted, never hidden
                ok, why = False, type(exc).__name__
            t1 = time.perf_counter()
            if t0 >= t_measure:
                if ok:
                    lat.append(t1 - t0)
                else:
                    errors[why] = errors.get(why, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        await asyncio.gather(*(client(c, http) for c in range(clients)))
    return np.asarray(lat), errors


def worker_stats(port: int) -> Dict[str, float]:
    """The server's worker counters (``/api/health``: batches, queries, seconds)."""
    import httpx

    return httpx.get(f"http://{HOST}:{port}/api/health", timeout=10).json()["worker"]


def main() -> None:
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
    args = ap.parse_args()
    if any(c < 1 or c > 64 for c in args.clients) or not 0 < args.seconds <= 600:
        ap.error("clients must be 1..64 and seconds 0..600")

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
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        print(
            f"#   gallery {n:,}: built in {built:.1f} s{recall}; server ready: {', '.join(ready)}"
        )
        if not args.workdir:
            for f in (gallery,):
                if os.path.isfile(f):
                    os.remove(f)


if __name__ == "__main__":
    main()
