"""``partreid demo``: generate a synthetic data set, train a CPU-sized model, evaluate, report.

It evaluates the same model untrained first, so the report shows what training bought.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Optional

import torch

from .config import build_config
from .data import build_dataset
from .data.datasets.synthetic_video import generate_videos
from .engine import train
from .engine.evaluator import evaluate, format_metrics
from .engine.setup import model_kwargs, test_transform
from .errors import InvalidValueError, MissingExtraError
from .models import build_model, list_models
from .report.html import write_html
from .utils.logs import setup_logging

log = logging.getLogger("partreid")

# CPU-sized recipe: a ResNet-18 from scratch at 64x32 on the generated set (the map after
# res_conv5 with last stride 1 is 4x2, enough rows for CGPN's 4 stripes).
DEMO_MODELS = {
    "cgpn": {"name": "cgpn", "backbone": "resnet18", "pretrained": False},
    "bot": {"name": "bot", "backbone": "resnet18", "pretrained": False},
}
DEMO_LOSSES = {
    "cgpn": [
        {"type": "cross_entropy", "output": "logits", "weight": 1.0, "label_smoothing": 0.1},
        {"type": "triplet", "output": "triplet", "weight": 1.0, "margin": 1.2},
        {"type": "mse", "output": "mse", "weight": 1.0, "reduction": "mean"},
    ],
    "bot": [
        {"type": "cross_entropy", "output": "logits", "weight": 1.0, "label_smoothing": 0.1},
        {"type": "triplet", "output": "triplet", "weight": 1.0, "margin": 0.3},
    ],
}


def demo_config(out: str, model: str = "cgpn", epochs: int = 30) -> dict:
    if model not in DEMO_MODELS:
        raise InvalidValueError(f"the demo knows models {sorted(DEMO_MODELS)}, got {model!r}")
    return {
        "output_dir": os.path.join(out, "run"),
        "seed": 0,
        "data": {"name": "synthetic", "root": os.path.join(out, "data")},
        "input": {"height": 64, "width": 32},
        "transforms": {"flip": 0.5, "pad": 2, "random_erasing": 0.3},
        # loader workers in the main process: on 2 cores, worker processes (re-forked every
        # epoch) only competed with the model for the CPU (4 epochs: 45.3 -> 40.8 s; same batches)
        "sampler": {"p": 8, "k": 4, "num_workers": 0},
        "model": DEMO_MODELS[model],
        "losses": DEMO_LOSSES[model],
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 5e-4},
        "schedule": {
            "epochs": epochs,
            "warmup": "linear",
            "warmup_epochs": 2,
            "warmup_start_lr": 1e-4,
            "milestones": [max(1, int(epochs * 0.75))],
        },
        # last.pth (409 MB with Adam's state) every 10 epochs and at the end, not after each of
        # the ~7 s epochs; SIGINT/SIGTERM still checkpoint first. No step-checkpoint history.
        "train": {
            "amp": False,
            "eval_period": 0,
            "log_period": 10,
            "tensorboard": False,
            "checkpoint_period": 10,
            "keep_checkpoints": 0,
        },
        "eval": {"batch_size": 128, "num_visualize": 8},
    }


def _default_model() -> str:
    return "cgpn" if "cgpn" in list_models() else "bot"


def _untrained_metrics(cfg, ds, model: str) -> dict:
    """The metrics of the model the training run starts from (the trainer seeds with cfg.seed)."""
    torch.manual_seed(cfg.seed)
    untrained = build_model(model, ds.num_train_pids, **model_kwargs(cfg))
    m0, _ = evaluate(
        untrained,
        ds.query,
        ds.gallery,
        test_transform(cfg),
        cfg.eval,
        torch.device("cpu"),
        cfg.sampler.num_workers,
        name="untrained",
    )
    log.info("untrained %s", format_metrics(m0))
    return {k: m0[k] for k in ("rank1", "rank5", "rank10", "mAP", "mINP")}


def _write_videos(out: str, data_root: str) -> Optional[str]:
    """Two short camera videos of the test identities with MOT boxes (for ``ingest``)."""
    folder = os.path.join(out, "videos")
    try:
        videos = generate_videos(folder, data_root)
    except MissingExtraError as exc:  # PyAV is the video extra
        log.info("no demo videos (%s)", exc)
        return None
    log.info("demo videos: %s", ", ".join(os.path.basename(v.video) for v in videos))
    return folder


def _report(cfg, ds, model: str, metrics: dict) -> str:
    run = cfg.output_dir
    with open(os.path.join(run, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    images = [
        p for p in ("ranked_list.png", "activations.png") if os.path.exists(os.path.join(run, p))
    ]
    m0 = metrics["untrained"]
    notes = [
        f"Synthetic data set (generated, {len(ds.train)} training images of "
        f"{ds.num_train_pids} identities); model {model} trained on the CPU for "
        f"{cfg.schedule.epochs} epochs in {metrics['demo_seconds']} s.",
        f"Untrained model on the same data: rank-1 {100 * m0['rank1']:.1f}%, "
        f"mAP {100 * m0['mAP']:.1f}%. Trained: rank-1 {100 * metrics['rank1']:.1f}%, "
        f"mAP {100 * metrics['mAP']:.1f}%.",
    ]
    return write_html(
        run, f"partreid demo: {model} on a synthetic data set", metrics, images, notes
    )


def _print_summary(cfg, metrics: dict, page: str, videos: Optional[str]) -> None:
    m0, ckpt = metrics["untrained"], os.path.join(cfg.output_dir, "last.pth")
    print()
    print(f"untrained: mAP {100 * m0['mAP']:.1f}%  rank-1 {100 * m0['rank1']:.1f}%")
    print(f"trained:   mAP {100 * metrics['mAP']:.1f}%  rank-1 {100 * metrics['rank1']:.1f}%")
    print(f"demo finished in {metrics['demo_seconds']:.0f} s; report: {os.path.abspath(page)}")
    gallery = os.path.join(cfg.data.root, "bounding_box_test")
    print(f"search it in a browser: partreid serve {ckpt} --gallery {gallery}")
    if videos:
        cam1 = os.path.join(videos, "cam1")
        print(
            f"camera footage into a store: partreid ingest {ckpt} {cam1}.mkv --boxes {cam1}.txt "
            "--camera 1 --start-time 2026-12-03T14:00:00 --store site  (README: A gallery that grows)"
        )


def run_demo(
    out: str = "partreid_demo", model: Optional[str] = None, epochs: Optional[int] = None
) -> dict:
    """Run the whole demo into ``out``; return the trained model's metrics."""
    start = time.time()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = model or _default_model()
    cfg = build_config(demo_config(out, model, epochs or 30))
    setup_logging(os.path.join(cfg.output_dir, "log.txt"))
    log.info("partreid demo: model %s; output in %s", model, os.path.abspath(out))
    ds = build_dataset(cfg.data.name, cfg.data.root)  # generates the synthetic set the first time
    videos = _write_videos(out, cfg.data.root)
    log.info("synthetic data set ready in %.1f s", time.time() - start)
    untrained = _untrained_metrics(cfg, ds, model)
    metrics = train(cfg)
    metrics["untrained"] = untrained
    metrics["demo_seconds"] = round(time.time() - start, 1)
    page = _report(cfg, ds, model, metrics)
    _print_summary(cfg, metrics, page, videos)
    return metrics
