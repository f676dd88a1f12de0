"""The training loop, top to bottom: data, model, losses, optimizer, epochs, evaluation.

result = train(load_config("configs/cgpn/market1501.yaml", ["data.root=/data"]))
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import time
from typing import Any, Dict, Optional

import torch
from tqdm import tqdm

from ..checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    model_meta,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ..config import Config, save_config
from ..data.loader import build_train_loader, seed_epoch
from ..data.transforms import build_transforms
from ..losses import LossComputer
from ..models import build_model
from .evaluator import evaluate, format_metrics
from .optim import build_optimizer, build_scheduler
from .reporting import write_run_report
from .runtime import load_data, model_kwargs, resolve_device, setup_logging, test_transform

log = logging.getLogger("partreid")


class _Writers:
    """CSV log of training steps, and TensorBoard when it is installed."""

    def __init__(self, output_dir: str, use_tb: bool, resume: bool):
        path = os.path.join(output_dir, "train_log.csv")
        self._file = open(path, "a" if resume else "w", newline="")  # noqa: SIM115 (closed in close())
        self._csv = None
        self._tb = None
        if use_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(output_dir, "tb"))
            except Exception:  # tensorboard is an optional extra
                log.info(
                    "tensorboard is not installed (pip install 'partreid[tensorboard]'); "
                    "writing CSV logs only"
                )

    def row(self, step: int, values: Dict[str, float]) -> None:
        if self._csv is None:
            self._csv = csv.DictWriter(self._file, fieldnames=list(values))
            if self._file.tell() == 0:
                self._csv.writeheader()
        self._csv.writerow(values)
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if k not in ("epoch", "iter"):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def train(cfg: Config, resume: Optional[str] = None) -> Dict[str, Any]:
    """Train ``cfg``'s model, evaluate it, write the run folder; return the final metrics.

    ``resume``: a checkpoint path (or ``"auto"`` for ``output_dir/last.pth``) to continue from;
    the run then continues exactly as if it had not been stopped.
    """
    out = cfg.output_dir
    setup_logging(out)
    save_config(cfg, os.path.join(out, "config.yaml"))
    device = resolve_device(cfg.train.device)
    use_amp = cfg.train.amp and device.type == "cuda"
    torch.manual_seed(cfg.seed)

    # -- data
    ds = load_data(cfg)
    train_tf = build_transforms(
        cfg.transforms,
        cfg.input.height,
        cfg.input.width,
        is_train=True,
        mean=cfg.input.mean,
        std=cfg.input.std,
    )
    loader = build_train_loader(
        ds.train,
        train_tf,
        cfg.sampler.p,
        cfg.sampler.k,
        num_workers=cfg.sampler.num_workers,
        seed=cfg.seed,
    )
    iters = (
        len(loader)
        if not cfg.train.max_iters_per_epoch
        else min(len(loader), cfg.train.max_iters_per_epoch)
    )
    if iters == 0:
        raise ValueError(
            f"the training set has too few identities for a P x K batch "
            f"(P={cfg.sampler.p}); lower sampler.p"
        )

    # -- model, losses, optimizer, schedule
    model = build_model(cfg.model["name"], ds.num_train_pids, **model_kwargs(cfg)).to(device)
    criterion = LossComputer(cfg.losses)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.optim.lr, iters)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "model %s: %.2fM parameters, %d training identities, %d iterations/epoch, device %s",
        cfg.model["name"],
        n_params / 1e6,
        ds.num_train_pids,
        iters,
        device,
    )

    start_epoch = 0
    if resume:
        path = os.path.join(out, "last.pth") if resume == "auto" else resume
        ckpt = load_checkpoint(path)
        saved = ckpt["meta"]["model"]
        if (saved.get("name"), saved.get("backbone")) != (
            cfg.model["name"],
            cfg.model.get("backbone"),
        ):
            raise CheckpointError(
                f"cannot resume from {path}: it holds model {saved.get('name')!r} "
                f"(backbone {saved.get('backbone')!r}), the config trains "
                f"{cfg.model['name']!r} (backbone {cfg.model.get('backbone')!r})"
            )
        if "train_state" not in ckpt:
            raise CheckpointError(
                f"cannot resume from {path}: it is an inference-only export "
                "(no optimizer state); resume from the run's last.pth"
            )
        load_model_state(model, ckpt, path)
        state = ckpt["train_state"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"]
        set_rng_state(state["rng"])
        log.info("resumed from %s after epoch %d", path, start_epoch)
    writers = _Writers(out, cfg.train.tensorboard, resume=bool(resume))

    # -- epochs
    for epoch in range(start_epoch, cfg.schedule.epochs):
        seed_epoch(loader, cfg.seed, epoch)
        model.train()
        t0, seen = time.time(), 0
        bar = tqdm(
            total=iters,
            desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}",
            leave=False,
            disable=not (cfg.train.progress and sys.stdout.isatty()),
        )
        for it, (images, pids, _, _) in enumerate(loader):
            if it == iters:
                break
            images = images.to(device, non_blocking=True)
            pids = pids.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=use_amp):
                outputs = model(images)
            loss, parts = criterion(outputs, pids)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.train.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += images.shape[0]
            bar.update(1)
            step = epoch * iters + it
            lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_mult", 1.0)
            if (it + 1) % cfg.train.log_period == 0 or it + 1 == iters:
                rate = seen / max(time.time() - t0, 1e-9)
                terms = "  ".join(f"{k} {v:.4f}" for k, v in parts.items())
                bar.set_postfix_str(f"loss {loss.item():.3f}")
                log.info(
                    "epoch %d iter %d/%d  loss %.4f  (%s)  lr %.2e  %.1f img/s",
                    epoch + 1,
                    it + 1,
                    iters,
                    loss.item(),
                    terms,
                    lr,
                    rate,
                )
                writers.row(
                    step,
                    {
                        "epoch": epoch + 1,
                        "iter": it + 1,
                        "lr": lr,
                        "loss": float(loss.item()),
                        **parts,
                        "img_per_s": rate,
                    },
                )
        bar.close()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss.item()} in epoch {epoch + 1}; "
                "lower optim.lr or check the data"
            )

        done = epoch + 1
        if done % cfg.train.checkpoint_period == 0 or done == cfg.schedule.epochs:
            save_checkpoint(
                os.path.join(out, "last.pth"),
                model.state_dict(),
                model_meta(cfg, model, ds.num_train_pids, epoch=done, step=done * iters),
                {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": done,
                    "step": done * iters,
                    "rng": rng_state(),
                },
            )
        if (
            cfg.train.eval_period
            and done % cfg.train.eval_period == 0
            and done < cfg.schedule.epochs
        ):
            m, _ = evaluate(
                model,
                ds.query,
                ds.gallery,
                test_transform(cfg),
                cfg.eval,
                device,
                cfg.sampler.num_workers,
                use_amp,
                name=cfg.data.name,
            )
            log.info("epoch %d  %s", done, format_metrics(m, cfg.data.name))
    writers.close()

    # -- final evaluation and report
    return write_run_report(cfg, model, ds, device, use_amp)
