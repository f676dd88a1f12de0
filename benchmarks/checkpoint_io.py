"""Cost of safe checkpoints: save/load time of a BoT-ResNet50 training checkpoint, and how much
of it the SHA-256 payload checksum takes. Prints figures; asserts nothing.

    nice -n 10 python benchmarks/checkpoint_io.py
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

from partreid.checkpoint import load_checkpoint, model_meta, payload_digest, save_checkpoint
from partreid.config import load_config
from partreid.models import build_model


def main() -> None:
    """Time save, load and checksum of one checkpoint (best of 3)."""
    torch.set_num_threads(1)
    cfg = load_config(None, ["model={name: bot, backbone: resnet50}"])
    model = build_model("bot", 751, backbone="resnet50")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    state = {"optimizer": opt.state_dict(), "epoch": 1, "iter": 0, "step": 100}
    meta = model_meta(cfg, model, 751)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "last.pth")
        times = {"save": [], "load": [], "checksum": []}
        for _ in range(3):
            t = time.perf_counter()
            save_checkpoint(path, model.state_dict(), meta, state)
            times["save"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ckpt = load_checkpoint(path)
            times["load"].append(time.perf_counter() - t)
            t = time.perf_counter()
            payload_digest(ckpt)
            times["checksum"].append(time.perf_counter() - t)
        size = os.path.getsize(path) / 1e6
    best = {k: min(v) for k, v in times.items()}
    print(f"BoT-ResNet50 + SGD momentum checkpoint: {size:.0f} MB")
    for k, v in best.items():
        print(f"  {k:9s} {v:.2f} s")
    print(
        f"  checksum share: {best['checksum'] / best['save']:.0%} of a save, "
        f"{best['checksum'] / best['load']:.0%} of a load"
    )


if __name__ == "__main__":
    main()
