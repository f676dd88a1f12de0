"""Fixtures for the server tests: a tiny untrained checkpoint, a small crop gallery, the app."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e .[serve])")


def make_checkpoint(path: str, model: str = "bot", seed: int = 0) -> str:
    """An untrained ResNet-18 ``model`` at 64x32 saved as a partreid checkpoint."""
    import torch

    from partreid.checkpoint import model_meta, save_checkpoint
    from partreid.config import load_config
    from partreid.models import build_model

    cfg = load_config(
        None,
        [
            f"model.name={model}",
            "model.backbone=resnet18",
            "model.pretrained=false",
            "input.height=64",
            "input.width=32",
        ],
    )
    torch.manual_seed(seed)
    net = build_model(model, 8, backbone="resnet18", pretrained=False)
    save_checkpoint(path, net.state_dict(), model_meta(cfg, net, 8))
    return path


def make_gallery(root: str, seed: int = 1) -> dict:
    """A small synthetic Market-layout set; its ``bounding_box_test`` plus one symlink to an
    image outside the folder make the gallery. Returns the folder, the query folder and the
    outside file."""
    from partreid.data import generate_synthetic

    data = os.path.join(root, "data")
    generate_synthetic(
        data,
        num_ids=12,
        test_fraction=0.5,
        num_cams=3,
        images_per_id_per_cam=2,
        height=64,
        width=32,
        num_distractors=3,
        num_junk=0,
        seed=seed,
    )
    gallery = os.path.join(root, "gallery")
    shutil.copytree(os.path.join(data, "bounding_box_test"), gallery)
    outside = os.path.join(root, "outside")
    os.makedirs(outside)
    secret = os.path.join(outside, "0099_c1_secret.jpg")
    shutil.copy(
        os.path.join(data, "query", sorted(os.listdir(os.path.join(data, "query")))[0]), secret
    )
    os.symlink(secret, os.path.join(gallery, "0099_c1_link.jpg"))
    return {"gallery": gallery, "query": os.path.join(data, "query"), "outside": secret}


@pytest.fixture(scope="session")
def serve_setup(tmp_path_factory):
    """Checkpoint, gallery folder and a loaded SearchWorker (with its cache folder)."""
    import torch

    from partreid.serve import ServeLimits, build_worker

    torch.set_num_threads(1)
    root = str(tmp_path_factory.mktemp("serve"))
    ckpt = make_checkpoint(os.path.join(root, "bot.pth"))
    paths = make_gallery(root)
    worker = build_worker(
        ckpt,
        paths["gallery"],
        cache_dir=os.path.join(root, "cache"),
        limits=ServeLimits(),
        device="cpu",
        batch_size=32,
        num_workers=0,
    )
    yield {"root": root, "checkpoint": ckpt, "worker": worker, **paths}
    worker.close()


@pytest.fixture(scope="session")
def client(serve_setup):
    """A TestClient over the app with the default limits."""
    from fastapi.testclient import TestClient

    from partreid.serve import create_app

    with TestClient(create_app(serve_setup["worker"])) as c:
        yield c


STORE_T0 = "2026-12-03T14:00:00"  # cameras c of the crops: 14:00 + (c - 1) hours; video 14:30


def make_video(folder: str, frames: int = 12) -> dict:
    """A 10 fps 128x96 video with two people (coloured boxes) and their MOT box file."""
    import av
    import numpy as np

    video, boxes = os.path.join(folder, "cam9.mp4"), os.path.join(folder, "cam9_gt.txt")
    out = av.open(video, "w")
    stream = out.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
    rows = []
    for f in range(1, frames + 1):
        img = np.full((96, 128, 3), 40, np.uint8)
        for tid, (x, colour) in enumerate([(10 + 2 * f, (220, 40, 40)), (80, (40, 200, 60))], 1):
            img[20:84, x : x + 32] = colour
            rows.append(f"{f},{tid},{x},20,32,64,1,1,1")
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    with open(boxes, "w") as fh:
        fh.write("\n".join(rows) + "\n")
    return {"video": video, "boxes": boxes}


def crops_manifest(folders: list, path: str) -> str:
    """A timed manifest of Market-style crop folders: camera from the name, track = identity,
    camera c's crops from 14:00 + (c - 1) h, one second apart within a track."""
    import re

    from partreid.utils.times import parse_time

    t0 = parse_time(STORE_T0)
    seen: dict = {}
    lines = ["image,timestamp,camera,track_id,frame,pid"]
    files = sorted((name, folder) for folder in folders for name in os.listdir(folder))
    for name, images in files:
        m = re.match(r"^(-?\d+)_c(\d+)", name)
        if not m or int(m.group(1)) < 0:
            continue
        pid, cam = int(m.group(1)), int(m.group(2))
        k = seen[(pid, cam)] = seen.get((pid, cam), -1) + 1
        ts = t0 + 3600 * (cam - 1) + k
        lines.append(
            f"{os.path.relpath(os.path.join(images, name), os.path.dirname(path))},{ts},{cam},{pid},{k},{pid}"
        )
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def store_setup(serve_setup, tmp_path_factory):
    """An embedded store (crops of 3 cameras in tracklets + a video camera 9), a model-only
    worker on the same checkpoint (PyTorch, as ingest) and the open store."""
    pytest.importorskip("av")
    from partreid.commands.ingest import ingest_command
    from partreid.serve import ServeLimits, build_worker
    from partreid.store import open_store

    root = str(tmp_path_factory.mktemp("store"))
    ckpt = serve_setup["checkpoint"]
    store_dir = os.path.join(root, "site_store")
    data = os.path.join(serve_setup["root"], "data")
    manifest = crops_manifest(
        [os.path.join(data, "bounding_box_test"), os.path.join(data, "query")],
        os.path.join(root, "crops.csv"),
    )
    vid = make_video(root)
    common = dict(device="cpu", batch_size=32, num_workers=0, progress=False)
    ingest_command(ckpt, manifest, store_dir, **common)
    ingest_command(
        ckpt,
        vid["video"],
        store_dir,
        boxes=vid["boxes"],
        camera=9,
        start_time="2026-12-03T14:30:00",
        **common,
    )
    worker = build_worker(
        ckpt,
        None,
        cache_dir=os.path.join(root, "cache"),
        limits=ServeLimits(),
        device="cpu",
        batch_size=32,
        num_workers=0,
        runtime="torch",
    )
    store = open_store(store_dir)
    query = os.path.join(
        data,
        "query",
        next(n for n in sorted(os.listdir(os.path.join(data, "query"))) if n.startswith("0009_c2")),
    )
    yield {
        "query_image": query,
        "root": root,
        "checkpoint": ckpt,
        "store_dir": store_dir,
        "store": store,
        "worker": worker,
        "manifest": manifest,
        **vid,
    }
    store.close()
    worker.close()


@pytest.fixture(scope="session")
def linked_copy(store_setup, tmp_path_factory):
    """``linked_copy()``: a new copy of the test store with its tracklets linked into site
    identities (threshold 0.6): its folder, for an app to open (deletions may happen)."""
    from partreid.store import open_store
    from partreid.store.link import link_store

    def make() -> str:
        copy = str(tmp_path_factory.mktemp("linked") / "store")
        shutil.copytree(store_setup["store_dir"], copy)
        with open_store(copy) as store:
            link_store(store, threshold=0.6)
        return copy

    return make
