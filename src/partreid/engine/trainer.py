"""The training loop, top to bottom: data, model, losses, optimizer, epochs, evaluation.

result = train(load_config("configs/cgpn/market1501.yaml", ["data.root=/data"]))

A run resumes exactly from any checkpoint, mid-epoch included: the sampler skips the batches
already done (every sample's seed depends only on (seed, epoch, position)) and the global RNG
states saved at that step are restored, so the weights match an uninterrupted run bit for bit.
Checkpoints are written at epoch ends (``train.checkpoint_period``), every
``train.checkpoint_every_iters`` steps and on SIGTERM/SIGINT (after the current step; the run
then exits with 128 + signal). Side effects happen only where ``is_main`` (rank 0 under DDP);
the bookkeeping lives in :mod:`partreid.engine.checkpointing`.

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
from typing import Any, Dict, Optional, Tuple

import torch
from tqdm import tqdm

from ..checkpoint import CheckpointError, load_model_state, model_meta, rng_state, set_rng_state
from ..config import Config, save_config
from ..data.device_augment import CachedImageDataset, cached_batches
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
from .setup import load_data, model_kwargs, test_transform
from .speed import input_pipeline, precision, prepare_model

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


def _train(cfg: Config, resume: Optional[str], device: torch.device) -> Dict[str, Any]:
    """The run itself (every process under DDP); ``device`` is this process's."""
    out = cfg.output_dir
    is_main = is_main_process()  # the one process that writes logs, checkpoints and reports
    world, rank = D.world_size(), D.rank()
    ckpts = Checkpointer(out, cfg.train.keep_checkpoints, cfg.train.best_metric)
    resume_path, ckpt = ckpts.resume_path(resume) if resume else (None, None)
    if is_main:
        if resume:  # drop the log lines the interrupted run wrote after its checkpoint
            offset = ckpt.get("train_state", {}).get("log_offset") if ckpt else 0
            if offset is not None:  # (older checkpoints did not record it)
                truncate_file(os.path.join(out, "log.txt"), offset)
        setup_logging(os.path.join(out, "log.txt"))
        save_config(cfg, os.path.join(out, "config.yaml"))
        ckpts.remove_unfinished()
    fast = _speed_switches(cfg.train, device)  # the CUDA-only switches off on the CPU
    prec = precision(fast, device)  # autocast dtype; a GradScaler only for float16
    torch.manual_seed(cfg.seed)  # the same initial weights on every process

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
    # train.cache_images: decode once into uint8; train.device_augment: augment on the device
    aug_gen = torch.Generator(device=device)  # seeded per process and step in the loop
    cache, augment = input_pipeline(cfg, ds.train, generator=aug_gen)
    if augment is not None:
        augment.channels_last = fast.channels_last
        train_pids = torch.as_tensor([int(item[1]) for item in ds.train])
        train_camids = torch.as_tensor([int(item[2]) for item in ds.train])
    memory_format = torch.channels_last if fast.channels_last else torch.preserve_format
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
    iters = (
        len(loader)
        if not cfg.train.max_iters_per_epoch
        else min(len(loader), cfg.train.max_iters_per_epoch)
    )
    if iters == 0:
        raise InvalidValueError(
            f"the training set has too few identities for a P x K batch "
            f"(P={cfg.sampler.p} over {world} process(es)); lower sampler.p"
        )
    if world > 1:
        log.info(
            "distributed: %d processes (%s, collective timeout %gs); global batch P=%d x K=%d = "
            "%d images per step, each process P=%d x K=%d = %d images",
            world,
            torch.distributed.get_backend(),
            cfg.train.dist_timeout_s,
            cfg.sampler.p,
            k,
            cfg.sampler.p * k,
            p_local,
            k,
            p_local * k,
        )

    # -- model, losses, optimizer, schedule
    # (``model``: the bare module, which checkpoints and evaluation use; ``net``: what the
    # training step calls - the same module, DDP-wrapped and/or compiled)
    model = build_model(cfg.model["name"], ds.num_train_pids, **model_kwargs(cfg))
    model = prepare_model(model, fast, device, compile_model=False)  # SyncBN, channels_last
    criterion = LossComputer(cfg.losses)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.optim.lr, iters)
    scaler = prec.scaler()
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
        if state.get("scaler"):  # (empty when saved without a float16 GradScaler)
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
    net = D.wrap_ddp(model, device)  # after loading the weights; broadcasts rank 0's
    if fast.compile:
        net = torch.compile(net)

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
    with StopOnSignal() as stop:  # (under DDP the processes agree on it every step: _agree)
        for epoch in range(start_epoch, cfg.schedule.epochs):
            first = start_iter if epoch == start_epoch else 0
            seed_epoch(loader, cfg.seed, epoch, start_batch=first)
            if first:  # mid-epoch resume: the RNG states exactly as they were at that step
                set_rng_state(ckpt["train_state"]["rng"])
            if augment is None:
                batches = loader
            else:  # this epoch's sampler indices -> uint8 batches from the cache, on the device
                indices = [i for i, _ in loader.sampler]
                batches = cached_batches(
                    cache, train_pids, train_camids, indices, loader.batch_size, device
                )
            model.train()
            t0, seen = time.time(), 0
            bar = tqdm(
                total=iters,
                initial=first,
                desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}",
                leave=False,
                disable=not (is_main and cfg.train.progress and sys.stdout.isatty()),
            )
            for it, (images, pids, _, _) in enumerate(batches, start=first):
                if it == iters:
                    break
                step = epoch * iters + it + 1  # steps done once this one is
                pids = pids.to(device, non_blocking=True)
                if augment is None:
                    images = images.to(device, non_blocking=True, memory_format=memory_format)
                else:  # uint8 on the device -> augmented; a seed per (process, step)
                    aug_gen.manual_seed(D.process_seed(epoch_seed(cfg.seed, epoch) + it))
                    images = augment(images)
                if world > 1 and it == first and epoch == start_epoch:
                    _log_first_batches(pids)
                with prec.autocast(device):
                    outputs = net(images)
                loss, parts = criterion(outputs, pids)
                optimizer.zero_grad(set_to_none=True)
                bad = nonfinite_term(loss, parts)
                any_bad, stop_signum = _agree(bad is not None, stop.signum)  # all processes
                if not any_bad:
                    scaler.scale(loss).backward()
                    if cfg.train.grad_clip > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                elif cfg.train.nonfinite == "stop":
                    value = parts.get(bad, float(loss.detach())) if bad else "non-finite"
                    bad = bad or "(on another process)"
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
                        bad or "(on another process)",
                        parts.get(bad, float(loss.detach())) if bad else "non-finite",
                        skipped,
                    )
                scheduler.step()
                seen += images.shape[0] * world
                bar.update(1)
                lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_mult", 1.0)
                log_now = (it + 1) % cfg.train.log_period == 0 or it + 1 == iters
                if log_now:  # (a collective under DDP: every process takes part)
                    loss, parts = _mean_over_processes(loss, parts)  # the global batch's
                if is_main and log_now:
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
                if is_main and (stop_signum or due):
                    save(epoch, it + 1)
                if stop_signum:  # (under DDP: any process's signal stops them all here)
                    bar.close()
                    raise TrainingInterrupted(
                        f"stopped by signal {stop_signum} after step {step} (epoch {epoch + 1}, "
                        f"iter {it + 1}/{iters}); the run is saved in {ckpts.last}. Continue it "
                        "with the same command and --resume at its end",
                        stop_signum,
                    )
            bar.close()

            # -- end of the epoch: evaluation (all processes extract, share the features),
            # checkpoint, best.pth
            done = epoch + 1
            metrics = None
            _sync_buffers(model)  # BN running stats: rank 0's everywhere (as DDP's forward does)
            if (
                cfg.train.eval_period
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
                    prec.enabled,
                    name=cfg.data.name,
                )
                log.info("epoch %d  %s", done, format_metrics(metrics, cfg.data.name))
                if is_main:
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

    # -- final evaluation and report (every process extracts its share; rank 0 writes)
    _sync_buffers(model)
    if is_main:
        return write_run_report(cfg, model, ds, device, prec.enabled)
    return evaluate_run(cfg, model, ds, device, prec.enabled, out_dir=None, draw=False)


# --------------------------------------------------------------------------- helpers


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
