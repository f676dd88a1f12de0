"""What a store costs on top of feature extraction: ``partreid ingest`` against ``extract`` alone.

    python benchmarks/ingest_speed.py --checkpoint demo/run/last.pth --videos demo/videos
    python benchmarks/ingest_speed.py                      # a random-weight BoT-R18, made here

For every camera video (with its MOT boxes) of ``--videos`` (default: generated with
``partreid.data.datasets.synthetic_video`` from a small synthetic data set) it times, in one
process and with one Extractor, (a) ``Extractor.extract`` of the video (decode, crop, model) and
(b) ``ingest`` of the same video into a fresh store of each backend (the same work plus ids,
timestamps and the store's atomic adds), and prints crops/s, the ratio (b)/(a) and the share of
(b) spent inside the store. The goal of the issue: the store costs < 10 % of ingest time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

from partreid.checkpoint import model_meta, save_checkpoint
from partreid.commands.ingest import ingest, model_description, open_store_for, open_timed_source
from partreid.config import load_config
from partreid.data import generate_synthetic
from partreid.data.datasets.synthetic_video import generate_videos
from partreid.inference import Extractor
from partreid.models import build_model


def random_checkpoint(path: str) -> str:
    """A BoT-R18 at 128x64 with random weights (the speed does not depend on training)."""
    over = ["model.name=bot", "model.backbone=resnet18", "model.pretrained=false"]
    cfg = load_config(None, over + ["input.height=128", "input.width=64"])
    torch.manual_seed(0)
    model = build_model("bot", 10, backbone="resnet18", pretrained=False)
    save_checkpoint(path, model.state_dict(), model_meta(cfg, model, 10))
    return path


def videos_in(folder: str):
    """``(video, boxes)`` pairs of a folder written by ``generate_videos``."""
    names = sorted(n for n in os.listdir(folder) if n.endswith(".mkv"))
    return [(os.path.join(folder, n), os.path.join(folder, n[:-4] + ".txt")) for n in names]


def main(argv=None) -> None:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="model (default: a random-weight BoT-R18 128x64)")
    ap.add_argument("--videos", help="folder with camN.mkv + camN.txt (default: generated)")
    ap.add_argument("--seconds", type=float, default=20.0, help="generated video length")
    ap.add_argument("--backends", nargs="+", default=["embedded", "milvus"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="ingest_speed_")
    try:
        ckpt = args.checkpoint or random_checkpoint(os.path.join(work, "bot.pth"))
        folder = args.videos
        if not folder:
            data = os.path.join(work, "data")
            generate_synthetic(data, num_ids=40, images_per_id_per_cam=2, height=64, width=32)
            folder = os.path.join(work, "videos")
            generate_videos(folder, data, cameras=2, seconds=args.seconds)
        ext = Extractor(ckpt, device="cpu", num_workers=1, progress=False)
        print(
            f"model {ext.info.name} {ext.info.height}x{ext.info.width}, {ext.feature_dim}-d; ",
            end="",
        )
        print(f"torch threads {torch.get_num_threads()}")
        print(
            f"{'video':<10} {'crops':>6} {'extract s':>10} {'backend':>9} {'ingest s':>9} "
            f"{'ratio':>6} {'in store':>9} {'crops/s':>8}"
        )
        for video, boxes in videos_in(folder):
            t = time.perf_counter()
            n = len(ext.extract(video, boxes=boxes))
            t_extract = time.perf_counter() - t
            for backend in args.backends:
                if backend == "milvus" and not _has_milvus():
                    print(f"{'':<10} {'':>6} {'':>10} {backend:>9}  (pymilvus/milvus-lite missing)")
                    continue
                uri = os.path.join(work, f"store_{backend}_{os.path.basename(video)}")
                uri = f"milvus://{uri}.db" if backend == "milvus" else uri
                src, timing = open_timed_source(video, boxes, 1, "2026-12-03T14:00:00", None)
                with open_store_for(uri, model_description(ext)) as store:
                    rep = ingest(ext, store, src, timing)
                print(
                    f"{os.path.basename(video):<10} {n:>6} {t_extract:>10.2f} {backend:>9} "
                    f"{rep.seconds:>9.2f} {rep.seconds / t_extract:>6.3f} "
                    f"{100 * rep.store_seconds / rep.seconds:>8.1f}% {rep.added / rep.seconds:>8.1f}"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _has_milvus() -> bool:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
