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
