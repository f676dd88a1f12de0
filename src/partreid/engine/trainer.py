"""The training loop, top to bottom: data, model, losses, optimizer, epochs, evaluation.

result = train(load_config("configs/cgpn/market1501.yaml", ["data.root=/data"]))

A run resumes exactly from any checkpoint, mid-epoch included: the sampler skips the batches
already done (every sample's seed depends only on (seed, epoch, position)) and the global RNG
states saved at that step are restored, so the weights match an uninterrupted run bit for bit.
Checkpoints are written every ``train.checkpoint_period`` epochs, at the end of training, after
each periodic evaluation, every ``train.checkpoint_every_iters`` steps and on SIGTERM/SIGINT
(after the current step; the run then exits with 128 + signal). Side effects happen only where
``is_main`` (rank 0 under DDP); the bookkeeping lives in :mod:`partreid.engine.checkpointing`.

Several processes: ``torchrun --nproc-per-node N -m partreid train -c CFG`` (multi-node with
torchrun's ``--nnodes/--node-rank/--rdzv-*`` options). Every process builds the same model and
the same global list of P x K batches and takes its share (``sampler.p`` is the GLOBAL number of
identities per step: each process gets P/N identities x K images, different identities on every
process); DistributedDataParallel averages the gradients; evaluation extracts each image on
exactly one process and gathers the features. Every collective gives up after
``train.dist_timeout_s``, so a dead or stuck process ends the run with a message, not a hang.
Process-local randomness (loader augmentation, device augmentation) is seeded per process;
the global RNG (dropout) is seeded identically on every process, so rank 0's saved RNG state
resumes all of them.

How it reads: :func:`_train` is the loop (open the run, then per epoch :func:`_train_epoch` and
:func:`_end_epoch`, then :func:`_finish`); everything a step needs lives in one
:class:`TrainRun` (model and ``net``, optimizer, schedule, scaler, loader, counters, checkpointer,
step log, best metric) that the named steps read and advance: :func:`_open_run` (build,
:func:`_resume`), :func:`_train_step`, :func:`_log_step`, :func:`_save`.

Speed switches (``train.amp/amp_dtype``, ``channels_last``, ``cudnn_benchmark``, ``compile``,
``cache_images``, ``device_augment``, ``sync_bn``): see :mod:`partreid.engine.speed`; the
CUDA-only ones are ignored on the CPU with one log line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint import CheckpointError, load_model_state, model_meta, rng_state, set_rng_state
from ..config import Config, save_config
from ..data.device_augment import CachedImageDataset, DeviceAugment, cached_batches
from ..data.loader import build_train_loader, epoch_seed, seed_epoch
from ..data.transforms import build_transforms
from ..errors import InvalidValueError
from ..losses import LossComputer
from ..models import build_model
from ..utils import distributed as D
from ..utils.device import resolve_device
from ..utils.distributed import DistributedError
from ..utils.logs import setup_logging
from .checkpointing import (
    Checkpointer,
    NonFiniteLossError,
    StepLog,
    StopOnSignal,
    TrainingInterrupted,
    is_main_process,
    nonfinite_term,
    truncate_file,
)
from .eval_run import evaluate_run, write_run_report
from .evaluator import evaluate, format_metrics
from .optim import build_optimizer, build_scheduler
from .setup import EvalTarget, load_data, model_kwargs, test_transform
from .speed import Precision, input_pipeline, precision, prepare_model

log = logging.getLogger("partreid")


def train(cfg: Config, resume: Optional[str] = None) -> Dict[str, Any]:
    """Train ``cfg``'s model, evaluate it, write the run folder; return the final metrics.

    ``resume``: a checkpoint path (or ``"auto"`` for ``output_dir/last.pth``, falling back to
    the newest readable step checkpoint) to continue from; the run then continues exactly as if
    it had not been stopped. Under torchrun every process calls it (see the module docstring);
    the non-main processes return the same metrics without writing anything.
    """
    if cfg.train.nonfinite not in ("stop", "skip"):
        raise InvalidValueError(
            f"train.nonfinite must be 'stop' or 'skip', got {cfg.train.nonfinite!r}"
        )
    device, started = _start_processes(cfg)
    try:
        result = _train(cfg, resume, device)
    except RuntimeError as exc:  # a collective failed: say so instead of a raw backend error
        if (
            D.is_distributed()
            and not isinstance(exc, (DistributedError, TrainingInterrupted))
            and _is_comm_error(exc)
        ):
            raise DistributedError(
                f"rank {D.rank()}/{D.world_size()}: a collective failed during training - "
                "another process stopped or did not answer within train.dist_timeout_s="
                f"{cfg.train.dist_timeout_s:g}s ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300] if str(exc) else ''})"
            ) from exc
        raise
    if started:
        D.cleanup()
    return result


# --------------------------------------------------------------------------- the run's state


@dataclass
class Inputs:
    """The training batches: the loader and, with ``train.cache_images``/``device_augment``,
    the uint8 image cache, its labels and the on-device augmentation (seeded per step)."""

    loader: Any
    iters: int  # batches per epoch
    memory_format: torch.memory_format  # of the batches on the device
    generator: torch.Generator  # the device augmentation's
    cache: Optional[torch.Tensor] = None
    augment: Optional[DeviceAugment] = None
    pids: Optional[torch.Tensor] = None  # of the cached items (with ``augment``)
    camids: Optional[torch.Tensor] = None


@dataclass
class TrainRun:
    """One training run: what it trains, with what, where it writes, and how far it is.

    ``model`` is the bare module, which checkpoints and evaluation use; ``net`` is what the
    training step calls: the same module, DDP-wrapped and/or compiled.
    """

    cfg: Config
    device: torch.device
    switches: Any  # cfg.train with the CUDA-only speed switches resolved for ``device``
    prec: Precision
    ds: Any  # the data set: train / query / gallery
    inputs: Inputs
    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    ckpts: Checkpointer
    is_main: bool  # the one process that writes logs, checkpoints and reports
    world: int  # processes
    net: Optional[nn.Module] = None
    steplog: Optional[StepLog] = None  # main process only
    start_epoch: int = 0  # where this process starts: epochs completed ...
    start_iter: int = 0  # ... and batches done in the next one
    step: int = 0  # optimizer steps done (skipped ones included)
    best: Optional[Dict[str, Any]] = None  # {"metric", "value", "step"} of best.pth
    skipped: int = 0  # steps skipped for a non-finite loss (train.nonfinite=skip)
    resume_rng: Optional[Dict[str, Any]] = None  # RNG states of a mid-epoch resume, until used


# --------------------------------------------------------------------------- the loop


def _train(cfg: Config, resume: Optional[str], device: torch.device) -> Dict[str, Any]:
    """The run itself (every process under DDP); ``device`` is this process's."""
    run = _open_run(cfg, resume, device)
    with StopOnSignal() as stop:  # (under DDP the processes agree on it every step: _agree)
        for epoch in range(run.start_epoch, cfg.schedule.epochs):
            _train_epoch(run, epoch, stop)
            _end_epoch(run, epoch)
    return _finish(run)


def _train_epoch(run: TrainRun, epoch: int, stop: StopOnSignal) -> None:
    """Train one epoch (the resumed one from the batch its checkpoint was written after)."""
    cfg, iters = run.cfg, run.inputs.iters
    first = run.start_iter if epoch == run.start_epoch else 0
    batches = _epoch_batches(run, epoch, first)
    run.model.train()
    t0, seen = time.time(), 0
    bar = tqdm(
        total=iters,
        initial=first,
        desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}",
        leave=False,
        disable=not (run.is_main and cfg.train.progress and sys.stdout.isatty()),
    )
    for it, (images, pids, _, _) in enumerate(batches, start=first):
        if it == iters:
            break
        run.step = epoch * iters + it + 1  # steps done once this one is
        images, pids = _to_device(run, images, pids, epoch, it)
        if run.world > 1 and it == first and epoch == run.start_epoch:
            _log_first_batches(pids)
        loss, parts, stop_signum = _train_step(run, images, pids, stop, epoch, it)
        seen += images.shape[0] * run.world
        bar.update(1)
        if (it + 1) % cfg.train.log_period == 0 or it + 1 == iters:
            _log_step(run, epoch, it, loss, parts, seen / max(time.time() - t0, 1e-9), bar)
        every = cfg.train.checkpoint_every_iters
        due = every > 0 and run.step % every == 0 and it + 1 < iters  # (epoch ends: _end_epoch)
        if run.is_main and (stop_signum or due):
            _save(run, epoch, it + 1)
        if stop_signum:  # (under DDP: any process's signal stops them all here)
            bar.close()
            raise TrainingInterrupted(
                f"stopped by signal {stop_signum} after step {run.step} (epoch {epoch + 1}, "
                f"iter {it + 1}/{iters}); the run is saved in {run.ckpts.last}. Continue it "
                "with the same command and --resume at its end",
                stop_signum,
            )
    bar.close()


def _end_epoch(run: TrainRun, epoch: int) -> None:
    """After an epoch: evaluation when due (every process extracts its share), the epoch's
    checkpoint when due, and best.pth when the evaluation beat the best so far."""
    cfg, done = run.cfg, epoch + 1
    _sync_buffers(run.model)  # BN running stats: rank 0's everywhere (as DDP's forward does)
    metrics = None
    if cfg.train.eval_period and done % cfg.train.eval_period == 0 and done < cfg.schedule.epochs:
        metrics = _evaluate_epoch(run, done)
    better = metrics is not None and run.ckpts.is_better(metrics, run.best)
    if better:
        value = float(metrics[cfg.train.best_metric])
        run.best = {"metric": cfg.train.best_metric, "value": value, "step": run.step}
    if run.is_main and _epoch_checkpoint_due(run, done, metrics):
        _save(run, epoch, run.inputs.iters, metrics)
        if better:
            run.ckpts.mark_best()
            log.info(
                "best.pth: %s %.4f at step %d", run.best["metric"], run.best["value"], run.step
            )


def _finish(run: TrainRun) -> Dict[str, Any]:
    """Close the step log; the final evaluation and report (every process extracts its share,
    the main process writes); the metrics."""
    if run.is_main:
        run.steplog.close()
        if run.skipped:
            log.warning("%d step(s) were skipped for a non-finite loss", run.skipped)
    _sync_buffers(run.model)
    target = EvalTarget(run.cfg, run.model, run.ds, run.device, run.prec.enabled)
    return write_run_report(target) if run.is_main else evaluate_run(target)


# --------------------------------------------------------------------------- building the run


def _open_run(cfg: Config, resume: Optional[str], device: torch.device) -> TrainRun:
    """The run folder opened and the run built, continued from its checkpoint with ``resume``.

    The checkpoint read for resuming (the whole model and optimizer state) is released once
    its values are in the model and the optimizer: it is not kept for the whole run.
    """
    ckpts = Checkpointer(cfg.output_dir, cfg.train.keep_checkpoints, cfg.train.best_metric)
    resume_path, ckpt = ckpts.resume_path(resume) if resume else (None, None)
    if is_main_process():
        _open_run_folder(cfg, ckpts, resume, ckpt)
    run = _build_run(cfg, device, ckpts)
    resumed = ckpt is not None
    if resumed:
        _resume(run, ckpt, resume_path)
    del ckpt  # (what the optimizer took from it, it now holds itself)
    if run.is_main:
        run.steplog = StepLog(cfg.output_dir, cfg.train.tensorboard, run.step if resumed else None)
    run.net = D.wrap_ddp(run.model, device)  # after loading the weights; broadcasts rank 0's
    if run.switches.compile:
        run.net = torch.compile(run.net)
    return run


def _open_run_folder(
    cfg: Config, ckpts: Checkpointer, resume: Optional[str], ckpt: Optional[Dict[str, Any]]
) -> None:
    """Main process: log.txt (cut back to the resumed checkpoint), config.yaml, no temp files."""
    log_txt = os.path.join(cfg.output_dir, "log.txt")
    if resume:  # drop the log lines the interrupted run wrote after its checkpoint
        offset = ckpt.get("train_state", {}).get("log_offset") if ckpt else 0
        if offset is not None:  # (older checkpoints did not record it)
            truncate_file(log_txt, offset)
    setup_logging(log_txt)
    save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
    ckpts.remove_unfinished()


def _build_run(cfg: Config, device: torch.device, ckpts: Checkpointer) -> TrainRun:
    """Data, model, losses, optimizer and schedule, at step 0 (the same on every process)."""
    switches = _speed_switches(cfg.train, device)  # the CUDA-only switches off on the CPU
    prec = precision(switches, device)  # autocast dtype; a GradScaler only for float16
    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    ds = load_data(cfg)
    inputs = _build_inputs(cfg, ds, device, switches)
    model = build_model(cfg.model["name"], ds.num_train_pids, **model_kwargs(cfg))
    model = prepare_model(model, switches, device, compile_model=False)  # SyncBN, channels_last
    criterion = LossComputer(cfg.losses)
    optimizer = build_optimizer(model, cfg.optim)
    log.info(
        "model %s: %.2fM parameters, %d training identities, %d iterations/epoch, device %s",
        cfg.model["name"],
        sum(p.numel() for p in model.parameters()) / 1e6,
        ds.num_train_pids,
        inputs.iters,
        device,
    )
    return TrainRun(
        cfg=cfg,
        device=device,
        switches=switches,
        prec=prec,
        ds=ds,
        inputs=inputs,
        model=model,
        criterion=criterion,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.schedule, cfg.optim.lr, inputs.iters),
        scaler=prec.scaler(),
        ckpts=ckpts,
        is_main=is_main_process(),
        world=D.world_size(),
    )


def _build_inputs(cfg: Config, ds: Any, device: torch.device, switches: Any) -> Inputs:
    """The training loader (this process's share of every global P x K batch) and, with
    ``train.cache_images``, the uint8 cache (``train.device_augment``: augmented on the device)."""
    world, rank = D.world_size(), D.rank()
    train_tf = build_transforms(
        cfg.transforms,
        cfg.input.height,
        cfg.input.width,
        is_train=True,
        mean=cfg.input.mean,
        std=cfg.input.std,
    )
    generator = torch.Generator(device=device)  # seeded per process and step in the loop
    cache, augment = input_pipeline(cfg, ds.train, generator=generator)
    p_local, k = D.per_process_pk(cfg.sampler.p, cfg.sampler.k)  # sampler.p is the global P
    loader = build_train_loader(
        ds.train,
        train_tf,
        p_local,
        k,
        num_workers=cfg.sampler.num_workers,
        seed=cfg.seed,  # the same on every process: they split one global batch list
        num_replicas=world,
        rank=rank,
        dataset=CachedImageDataset(ds.train, cache, train_tf) if cache is not None else None,
    )
    limit = cfg.train.max_iters_per_epoch
    iters = min(len(loader), limit) if limit else len(loader)
    if iters == 0:
        raise InvalidValueError(
            f"the training set has too few identities for a P x K batch "
            f"(P={cfg.sampler.p} over {world} process(es)); lower sampler.p"
        )
    if world > 1:
        _log_processes(cfg, p_local, k)
    inputs = Inputs(loader, iters, torch.preserve_format, generator, cache, augment)
    if switches.channels_last:
        inputs.memory_format = torch.channels_last
    if augment is not None:
        augment.channels_last = switches.channels_last
        inputs.pids = torch.as_tensor([int(item[1]) for item in ds.train])
        inputs.camids = torch.as_tensor([int(item[2]) for item in ds.train])
    return inputs


def _resume(run: TrainRun, ckpt: Dict[str, Any], path: str) -> None:
    """Continue from ``ckpt``: weights, optimizer, schedule, position in the epoch, bookkeeping."""
    iters = run.inputs.iters
    state = _check_resumable(run.cfg, ckpt, path, iters)
    load_model_state(run.model, ckpt, path)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):  # (empty when saved without a float16 GradScaler)
        run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.start_iter = int(state["epoch"]), int(state.get("iter", 0))
    run.step = int(state.get("step", run.start_epoch * iters + run.start_iter))
    run.best, run.skipped = state.get("best"), int(state.get("nonfinite_skipped", 0))
    if run.start_iter:  # mid-epoch: the RNG states of that step, restored when it comes
        run.resume_rng = state["rng"]
    log.info(
        "resumed from %s at step %d (epoch %d, %d batches into it)",
        path,
        run.step,
        run.start_epoch + 1,
        run.start_iter,
    )


# --------------------------------------------------------------------------- one step


def _epoch_batches(run: TrainRun, epoch: int, first: int) -> Iterable:
    """``epoch``'s batches from batch ``first`` on (the RNG states of a mid-epoch resume set)."""
    inputs = run.inputs
    seed_epoch(inputs.loader, run.cfg.seed, epoch, start_batch=first)
    if first:  # mid-epoch resume: the RNG states exactly as they were at that step
        set_rng_state(run.resume_rng)
        run.resume_rng = None
    if inputs.augment is None:
        return inputs.loader
    # this epoch's sampler indices -> uint8 batches from the cache, on the device
    indices = [i for i, _ in inputs.loader.sampler]
    return cached_batches(
        inputs.cache, inputs.pids, inputs.camids, indices, inputs.loader.batch_size, run.device
    )


def _to_device(
    run: TrainRun, images: torch.Tensor, pids: torch.Tensor, epoch: int, it: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A batch on the device (uint8 cached batches augmented there, seeded per process and step)."""
    inputs = run.inputs
    pids = pids.to(run.device, non_blocking=True)
    if inputs.augment is None:
        images = images.to(run.device, non_blocking=True, memory_format=inputs.memory_format)
    else:
        inputs.generator.manual_seed(D.process_seed(epoch_seed(run.cfg.seed, epoch) + it))
        images = inputs.augment(images)
    return images, pids


def _train_step(
    run: TrainRun,
    images: torch.Tensor,
    pids: torch.Tensor,
    stop: StopOnSignal,
    epoch: int,
    it: int,
) -> Tuple[torch.Tensor, Dict[str, float], int]:
    """Forward, loss and (unless a process's loss is non-finite) the update; the schedule steps
    either way. Returns the loss, its terms and the stop signal any process got (or 0)."""
    with run.prec.autocast(run.device):
        outputs = run.net(images)
    loss, parts = run.criterion(outputs, pids)
    run.optimizer.zero_grad(set_to_none=True)
    bad = nonfinite_term(loss, parts)
    any_bad, stop_signum = _agree(bad is not None, stop.signum)  # all processes
    if not any_bad:
        run.scaler.scale(loss).backward()
        if run.cfg.train.grad_clip > 0:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.train.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        _nonfinite_step(run, bad, loss, parts, epoch, it)
    run.scheduler.step()
    return loss, parts, stop_signum


def _nonfinite_step(
    run: TrainRun,
    bad: Optional[str],
    loss: torch.Tensor,
    parts: Dict[str, float],
    epoch: int,
    it: int,
) -> None:
    """A step whose loss (term ``bad``, or None: on another process) is non-finite: stop before
    updating the weights (``train.nonfinite=stop``), or count it as skipped (``skip``)."""
    value = parts.get(bad, float(loss.detach())) if bad else "non-finite"
    term = bad or "(on another process)"
    if run.cfg.train.nonfinite == "stop":
        raise NonFiniteLossError(
            f"the loss term {term!r} became {value} at step {run.step} (epoch "
            f"{epoch + 1}, iter {it + 1}); stopped before updating the weights. The "
            f"last good checkpoint is {run.ckpts.last}. Lower optim.lr, set "
            "train.grad_clip, check the data, or skip such steps with "
            "train.nonfinite=skip"
        )
    run.skipped += 1
    log.warning(
        "step %d (epoch %d, iter %d): loss term %r is %s; step skipped (%d skipped so far)",
        run.step,
        epoch + 1,
        it + 1,
        term,
        value,
        run.skipped,
    )


def _log_step(
    run: TrainRun,
    epoch: int,
    it: int,
    loss: torch.Tensor,
    parts: Dict[str, float],
    rate: float,
    bar: tqdm,
) -> None:
    """Log a step (the global batch's loss under DDP: a collective, every process takes part):
    a log line, a train_log.csv row and the progress bar, on the main process."""
    loss, parts = _mean_over_processes(loss, parts)
    if not run.is_main:
        return
    group = run.optimizer.param_groups[0]
    lr = group["lr"] / group.get("lr_mult", 1.0)
    terms = "  ".join(f"{k} {v:.4f}" for k, v in parts.items())
    bar.set_postfix_str(f"loss {loss.item():.3f}")
    iters = run.inputs.iters
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
    row = {"epoch": epoch + 1, "iter": it + 1, "lr": lr, "loss": float(loss.item()), **parts}
    run.steplog.row(run.step, {**row, "img_per_s": rate, "nonfinite_skipped": run.skipped})


# --------------------------------------------------------------------------- epoch ends


def _evaluate_epoch(run: TrainRun, done: int) -> Dict[str, Any]:
    """The periodic evaluation after ``done`` epochs (every process extracts its share)."""
    cfg = run.cfg
    metrics, _ = evaluate(
        run.model,
        run.ds.query,
        run.ds.gallery,
        test_transform(cfg),
        cfg.eval,
        run.device,
        cfg.sampler.num_workers,
        run.prec.enabled,
        name=cfg.data.name,
    )
    log.info("epoch %d  %s", done, format_metrics(metrics, cfg.data.name))
    if run.is_main:
        scalars = {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, float)}
        run.steplog.scalars(run.step, scalars)
    return metrics


def _epoch_checkpoint_due(run: TrainRun, done: int, metrics: Optional[Dict[str, Any]]) -> bool:
    """Whether ``done`` epochs end with a checkpoint: every ``train.checkpoint_period`` epochs,
    at the end of training, after an evaluation (best.pth may become it) and when the step is
    one of ``train.checkpoint_every_iters``'s."""
    t, every = run.cfg.train, run.cfg.train.checkpoint_every_iters
    return (
        done % t.checkpoint_period == 0
        or done == run.cfg.schedule.epochs
        or metrics is not None
        or (every > 0 and run.step % every == 0)
    )


def _save(
    run: TrainRun, epoch: int, done_iters: int, metrics: Optional[Dict[str, Any]] = None
) -> None:
    """Checkpoint after ``done_iters`` batches of (0-based) ``epoch``; main process only."""
    t0 = time.perf_counter()
    if done_iters == run.inputs.iters:
        epoch, done_iters = epoch + 1, 0
    for h in log.handlers:
        h.flush()
    log_txt = os.path.join(run.cfg.output_dir, "log.txt")
    train_state = {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "epoch": epoch,  # epochs completed
        "iter": done_iters,  # batches done in the epoch in progress
        "step": run.step,
        "iters_per_epoch": run.inputs.iters,
        "rng": rng_state(),
        "best": run.best,
        "nonfinite_skipped": run.skipped,
        "log_offset": os.path.getsize(log_txt) if os.path.exists(log_txt) else 0,
    }
    meta = model_meta(
        run.cfg, run.model, run.ds.num_train_pids, epoch=epoch, step=run.step, metrics=metrics
    )
    path = run.ckpts.save(run.model.state_dict(), meta, train_state)
    log.info("checkpoint at step %d -> %s (%.1f s)", run.step, path, time.perf_counter() - t0)


# --------------------------------------------------------------------------- helpers


def _log_processes(cfg: Config, p_local: int, k: int) -> None:
    """Log the distributed set-up: processes, backend, timeout, global and per-process batch."""
    log.info(
        "distributed: %d processes (%s, collective timeout %gs); global batch P=%d x K=%d = "
        "%d images per step, each process P=%d x K=%d = %d images",
        D.world_size(),
        torch.distributed.get_backend(),
        cfg.train.dist_timeout_s,
        cfg.sampler.p,
        k,
        cfg.sampler.p * k,
        p_local,
        k,
        p_local * k,
    )


def _start_processes(cfg: Config) -> Tuple[torch.device, bool]:
    """``(device, started)``: under torchrun join the process group (collectives time out after
    ``train.dist_timeout_s``) on ``cuda:LOCAL_RANK`` or the CPU; else the configured device."""
    if D.env_world()[1] == 1:
        return resolve_device(cfg.train.device), False
    started = not torch.distributed.is_initialized()
    info = D.init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
    return info.device, started


def _speed_switches(train_cfg: Any, device: torch.device) -> Any:
    """``train_cfg`` with the CUDA-only speed switches turned off (one log line) on the CPU."""
    if device.type == "cuda":
        return train_cfg
    cuda_only = ("amp", "channels_last", "cudnn_benchmark", "sync_bn")
    ignored = [k for k in cuda_only if getattr(train_cfg, k)]
    if ignored:
        log.info(
            "device %s: ignoring the CUDA-only switches train.%s", device, ", train.".join(ignored)
        )
    return dataclasses.replace(train_cfg, **{k: False for k in ignored})


def _agree(bad: bool, signum: Optional[int]) -> Tuple[bool, int]:
    """``(any process had a non-finite loss, a stop signal any process got or 0)``: under DDP
    every process must take the same branch (skip/stop/step) at every step."""
    if not D.is_distributed():
        return bad, int(signum or 0)
    flags = torch.tensor([int(bad), int(signum or 0)], dtype=torch.int64)
    if torch.distributed.get_backend() == "nccl":
        flags = flags.cuda()
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return bool(flags[0]), int(flags[1])


def _sync_buffers(model: torch.nn.Module) -> None:
    """Under DDP: copy rank 0's buffers (BatchNorm running statistics) to every process.

    DDP broadcasts them at the start of each forward, but the last training forward updates
    each process's copy from its own batch; the sharded evaluation needs one model.
    """
    if not D.is_distributed():
        return
    for buf in model.buffers():
        torch.distributed.broadcast(buf, 0)


def _mean_over_processes(
    loss: torch.Tensor, parts: Dict[str, float]
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The loss and its terms averaged over the processes (what the global batch gives)."""
    if not D.is_distributed():
        return loss, parts
    vals = torch.tensor([float(loss.detach()), *parts.values()], dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        vals = vals.cuda()
    torch.distributed.all_reduce(vals)
    vals = (vals / D.world_size()).tolist()
    return torch.tensor(vals[0]), dict(zip(parts, vals[1:]))


def _log_first_batches(pids: torch.Tensor) -> None:
    """Log what every process trains on at its first step (images, identities, overlap)."""
    per_rank = [p.tolist() for p in D.all_gather_rows(pids.detach().cpu())]
    sets = [set(p) for p in per_rank]
    shared = set.union(*(a & b for i, a in enumerate(sets) for b in sets[i + 1 :]))
    for r, p in enumerate(per_rank):
        log.info(
            "first step, rank %d: %d images of %d identities %s",
            r,
            len(p),
            len(sets[r]),
            sorted(sets[r]),
        )
    log.info("first step: %d identities shared between processes", len(shared))


def _is_comm_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a failed collective (a dead or stuck peer)."""
    if isinstance(exc, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(exc)
    keys = ("gloo", "NCCL", "nccl", "Connection", "timed out", "Timeout", "ProcessGroup")
    return any(key in text for key in keys)


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
