"""The training loop, top to bottom: data, model, losses, optimizer, epochs, evaluation.

result = train(load_config("configs/cgpn/market1501.yaml", ["data.root=/data"]))

A run resumes exactly from any checkpoint, mid-epoch included: the sampler skips the batches
already done (every sample's seed depends only on (seed, epoch, position)) and the global RNG
states saved at that step are restored, so the weights match an uninterrupted run bit for bit.
Checkpoints are written at epoch ends (``train.checkpoint_period``), every
``train.checkpoint_every_iters`` steps and on SIGTERM/SIGINT (after the current step; the run
then exits with 128 + signal). Side effects happen only where ``is_main`` (rank 0 under DDP);
the bookkeeping lives in :mod:`partreid.engine.guard`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Dict, Optional

import torch
from tqdm import tqdm

from ..checkpoint import CheckpointError, load_model_state, model_meta, rng_state, set_rng_state
from ..config import Config, save_config
from ..data.loader import build_train_loader, seed_epoch
from ..data.transforms import build_transforms
from ..losses import LossComputer
from ..models import build_model
from .evaluator import evaluate, format_metrics
from .guard import (
    Checkpointer,
    NonFiniteLossError,
    StepLog,
    StopOnSignal,
    TrainingInterrupted,
    is_main_process,
    nonfinite_term,
    truncate_file,
)
from .optim import build_optimizer, build_scheduler
from .reporting import write_run_report
from .runtime import load_data, model_kwargs, resolve_device, setup_logging, test_transform

log = logging.getLogger("partreid")


def train(cfg: Config, resume: Optional[str] = None) -> Dict[str, Any]:
    """Train ``cfg``'s model, evaluate it, write the run folder; return the final metrics.

    ``resume``: a checkpoint path (or ``"auto"`` for ``output_dir/last.pth``, falling back to
    the newest readable step checkpoint) to continue from; the run then continues exactly as if
    it had not been stopped.
    """
    out = cfg.output_dir
    is_main = is_main_process()  # the one process that writes logs, checkpoints and reports
    if cfg.train.nonfinite not in ("stop", "skip"):
        raise ValueError(f"train.nonfinite must be 'stop' or 'skip', got {cfg.train.nonfinite!r}")
    ckpts = Checkpointer(out, cfg.train.keep_checkpoints, cfg.train.best_metric)
    resume_path, ckpt = ckpts.resume_path(resume) if resume else (None, None)
    if is_main:
        if resume:  # drop the log lines the interrupted run wrote after its checkpoint
            offset = ckpt.get("train_state", {}).get("log_offset") if ckpt else 0
            if offset is not None:  # (older checkpoints did not record it)
                truncate_file(os.path.join(out, "log.txt"), offset)
        setup_logging(out)
        save_config(cfg, os.path.join(out, "config.yaml"))
        ckpts.remove_unfinished()
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

    # -- resume: weights, optimizer, schedule, position in the epoch, bookkeeping
    start_epoch, start_iter, step = 0, 0, 0
    best: Optional[Dict[str, Any]] = None  # {"metric", "value", "step"} of best.pth
    skipped = 0  # steps skipped for a non-finite loss (train.nonfinite=skip)
    if ckpt is not None:
        state = _check_resumable(cfg, ckpt, resume_path, iters)
        load_model_state(model, ckpt, resume_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, start_iter = int(state["epoch"]), int(state.get("iter", 0))
        step = int(state.get("step", start_epoch * iters + start_iter))
        best, skipped = state.get("best"), int(state.get("nonfinite_skipped", 0))
        log.info(
            "resumed from %s at step %d (epoch %d, %d batches into it)",
            resume_path,
            step,
            start_epoch + 1,
            start_iter,
        )
    steplog = StepLog(out, cfg.train.tensorboard, step if ckpt else None) if is_main else None

    def save(epoch: int, done_iters: int, metrics: Optional[Dict[str, Any]] = None) -> None:
        """Checkpoint after ``done_iters`` batches of (0-based) ``epoch``; main process only."""
        if done_iters == iters:
            epoch, done_iters = epoch + 1, 0
        for h in log.handlers:
            h.flush()
        log_txt = os.path.join(out, "log.txt")
        train_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,  # epochs completed
            "iter": done_iters,  # batches done in the epoch in progress
            "step": step,
            "iters_per_epoch": iters,
            "rng": rng_state(),
            "best": best,
            "nonfinite_skipped": skipped,
            "log_offset": os.path.getsize(log_txt) if os.path.exists(log_txt) else 0,
        }
        meta = model_meta(cfg, model, ds.num_train_pids, epoch=epoch, step=step, metrics=metrics)
        path = ckpts.save(model.state_dict(), meta, train_state)
        log.info("checkpoint at step %d -> %s", step, path)

    # -- epochs
    with StopOnSignal() as stop:  # under DDP: agree on stop.requested across ranks
        for epoch in range(start_epoch, cfg.schedule.epochs):
            first = start_iter if epoch == start_epoch else 0
            seed_epoch(loader, cfg.seed, epoch, start_batch=first)
            if first:  # mid-epoch resume: the RNG states exactly as they were at that step
                set_rng_state(ckpt["train_state"]["rng"])
            model.train()
            t0, seen = time.time(), 0
            bar = tqdm(
                total=iters,
                initial=first,
                desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}",
                leave=False,
                disable=not (is_main and cfg.train.progress and sys.stdout.isatty()),
            )
            for it, (images, pids, _, _) in enumerate(loader, start=first):
                if it == iters:
                    break
                step = epoch * iters + it + 1  # steps done once this one is
                images = images.to(device, non_blocking=True)
                pids = pids.to(device, non_blocking=True)
                with torch.autocast(device.type, enabled=use_amp):
                    outputs = model(images)
                loss, parts = criterion(outputs, pids)
                optimizer.zero_grad(set_to_none=True)
                bad = nonfinite_term(loss, parts)  # under DDP: agree on it across ranks
                if bad is None:
                    scaler.scale(loss).backward()
                    if cfg.train.grad_clip > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                elif cfg.train.nonfinite == "stop":
                    value = parts.get(bad, float(loss.detach()))
                    raise NonFiniteLossError(
                        f"the loss term {bad!r} became {value} at step {step} (epoch "
                        f"{epoch + 1}, iter {it + 1}); stopped before updating the weights. The "
                        f"last good checkpoint is {ckpts.last}. Lower optim.lr, set "
                        "train.grad_clip, check the data, or skip such steps with "
                        "train.nonfinite=skip"
                    )
                else:
                    skipped += 1
                    log.warning(
                        "step %d (epoch %d, iter %d): loss term %r is %s; step skipped "
                        "(%d skipped so far)",
                        step,
                        epoch + 1,
                        it + 1,
                        bad,
                        parts.get(bad, float(loss.detach())),
                        skipped,
                    )
                scheduler.step()
                seen += images.shape[0]
                bar.update(1)
                lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_mult", 1.0)
                if is_main and ((it + 1) % cfg.train.log_period == 0 or it + 1 == iters):
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
                    steplog.row(
                        step,
                        {
                            "epoch": epoch + 1,
                            "iter": it + 1,
                            "lr": lr,
                            "loss": float(loss.item()),
                            **parts,
                            "img_per_s": rate,
                            "nonfinite_skipped": skipped,
                        },
                    )
                every = cfg.train.checkpoint_every_iters
                due = every > 0 and step % every == 0 and it + 1 < iters
                if is_main and (stop.requested or due):
                    save(epoch, it + 1)
                if stop.requested:
                    bar.close()
                    raise TrainingInterrupted(
                        f"stopped by signal {stop.signum} after step {step} (epoch {epoch + 1}, "
                        f"iter {it + 1}/{iters}); the run is saved in {ckpts.last}. Continue it "
                        "with the same command and --resume at its end",
                        stop.signum,
                    )
            bar.close()

            # -- end of the epoch: evaluation (main process), checkpoint, best.pth
            done = epoch + 1
            metrics = None
            if (
                is_main
                and cfg.train.eval_period
                and done % cfg.train.eval_period == 0
                and done < cfg.schedule.epochs
            ):
                metrics, _ = evaluate(
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
                log.info("epoch %d  %s", done, format_metrics(metrics, cfg.data.name))
                steplog.scalars(
                    step, {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, float)}
                )
            better = metrics is not None and ckpts.is_better(metrics, best)
            if better:
                best = {
                    "metric": cfg.train.best_metric,
                    "value": float(metrics[cfg.train.best_metric]),
                    "step": step,
                }
            every = cfg.train.checkpoint_every_iters
            if is_main and (
                done % cfg.train.checkpoint_period == 0
                or done == cfg.schedule.epochs
                or metrics is not None
                or (every > 0 and step % every == 0)
            ):
                save(epoch, iters, metrics)
                if better:
                    ckpts.mark_best()
                    log.info("best.pth: %s %.4f at step %d", best["metric"], best["value"], step)
    if is_main:
        steplog.close()
        if skipped:
            log.warning("%d step(s) were skipped for a non-finite loss", skipped)

    # -- final evaluation and report
    return write_run_report(cfg, model, ds, device, use_amp) if is_main else {}


def _check_resumable(cfg: Config, ckpt: Dict[str, Any], path: str, iters: int) -> Dict[str, Any]:
    """The checkpoint's train_state, or a clear error when this config cannot continue it."""
    saved = ckpt["meta"]["model"]
    if (saved.get("name"), saved.get("backbone")) != (cfg.model["name"], cfg.model.get("backbone")):
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
    state = ckpt["train_state"]
    saved_iters = state.get("iters_per_epoch", iters)
    if int(state.get("iter", 0)) and saved_iters != iters:
        raise CheckpointError(
            f"cannot resume from {path} in the middle of an epoch: it was written with "
            f"{saved_iters} iterations per epoch, this config gives {iters} (check "
            "sampler.p/k and train.max_iters_per_epoch)"
        )
    return state
