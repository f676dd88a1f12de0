"""Checkpoints: self-describing, written atomically, read without unpickling code.

A partreid checkpoint is a dict of plain containers, numbers, strings and tensors, so
``torch.load(weights_only=True)`` reads it and a downloaded file can never run code::

    {"format": "partreid", "format_version": 2,
     "model": state_dict,
     "meta": {"model": {...model config...}, "num_classes", "input": {height, width, mean, std},
              "feature_dim", "dataset", "partreid_version", "torch_version", "config": {...},
              "epoch", "step", "metrics": {...}},
     "train_state": {"optimizer", "scheduler", "scaler", "rng", "epoch", "step"}}  # not in exports

``train_state`` is what ``--resume`` needs; ``partreid export --format weights`` drops it.
It also holds ``iter`` (batches done in the epoch in progress; 0 at an epoch end, absent in
older files) and the bookkeeping an exact resume needs (``best``, ``nonfinite_skipped``,
``log_offset``).

Integrity: ``torch.load`` does not check the zip CRCs, so a flipped bit in a tensor loads
silently. :func:`save_checkpoint` therefore adds ``"checksum": {"sha256": ...}`` over every value
of the payload (tensor bytes, dtypes, shapes and plain values); :func:`load_checkpoint` verifies it
when present (files without it, written before, still load).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .errors import PartreidError

FORMAT = "partreid"
FORMAT_VERSION = 2


class CheckpointError(PartreidError, RuntimeError):
    """A checkpoint that is missing, unreadable, unsafe or not partreid's."""


# --------------------------------------------------------------------------- RNG states


def rng_state() -> Dict[str, Any]:
    """The Python, numpy, torch (and CUDA) RNG states in forms ``weights_only`` loading allows."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- meta


def model_meta(
    cfg,
    model: nn.Module,
    num_classes: int,
    dataset: Optional[str] = None,
    epoch: int = 0,
    step: int = 0,
    metrics: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """What a checkpoint says about its model: enough to rebuild it and feed it images."""
    return {
        "model": dict(cfg.model),
        "num_classes": int(num_classes),
        "input": {
            "height": int(cfg.input.height),
            "width": int(cfg.input.width),
            "mean": [float(v) for v in cfg.input.mean],
            "std": [float(v) for v in cfg.input.std],
        },
        "feature_dim": int(getattr(model, "feature_dim", 0)),
        "dataset": dataset or cfg.data.name,
        "partreid_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "config": cfg.to_dict(),
        "epoch": int(epoch),
        "step": int(step),
        "metrics": dict(metrics or {}),
    }


# --------------------------------------------------------------------------- integrity


def _feed(h: Any, obj: Any) -> None:
    """Hash ``obj`` (nested dicts/lists/tuples of tensors and plain values) deterministically."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the bytes in place, no copy
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k, v in sorted(obj.items(), key=lambda kv: repr(kv[0])):
            h.update(repr(k).encode())
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"V{obj!r}".encode())


def payload_digest(payload: Dict[str, Any]) -> str:
    """SHA-256 over every value of a checkpoint payload except its ``checksum`` entry."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != "checksum"})
    return h.hexdigest()


# --------------------------------------------------------------------------- writing / reading


def save_checkpoint(
    path: str,
    model_state: Dict[str, torch.Tensor],
    meta: Dict[str, Any],
    train_state: Optional[Dict[str, Any]] = None,
) -> None:
    """Write a checkpoint to a temporary file, then rename it over ``path``.

    A crash or a failing write (disk full, permission) never leaves half a file and never
    touches the previous ``path``; the error says which file could not be written and why.
    """
    payload: Dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model_state,
        "meta": meta,
    }
    if train_state is not None:
        payload["train_state"] = train_state
    payload["checksum"] = {"sha256": payload_digest(payload)}
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(folder, exist_ok=True)
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise CheckpointError(
            f"could not write checkpoint {path}: {exc}; the previous "
            "checkpoint there (if any) is unchanged"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Read a partreid checkpoint safely (``weights_only``); one clear line for anything else."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        globals_ = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln]
        if globals_:  # the file asks to import and call something: never run it
            raise CheckpointError(
                f"refusing to load {path}: it holds pickled Python objects that could run code "
                f"when loaded ({globals_[0][:160]}); partreid checkpoints hold only tensors and "
                "plain values, so this file is unsafe (or damaged)"
            ) from exc
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupted (its pickled structure does "
            f"not decode: {_first_line(exc)})"
        ) from exc
    except Exception as exc:  # zip, pickle and decoding errors of a damaged file
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated, corrupted "
            f"or not a PyTorch checkpoint ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not a partreid checkpoint (no 'format: partreid' header; it holds {keys})"
        )
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer partreid (format "
            f"{ckpt['format_version']}, this one reads {FORMAT_VERSION}); "
            "upgrade partreid"
        )
    expected = (
        ckpt.get("checksum", {}).get("sha256") if isinstance(ckpt.get("checksum"), dict) else None
    )
    if expected is not None and payload_digest(ckpt) != expected:
        raise CheckpointError(
            f"cannot read checkpoint {path}: checksum mismatch, the file is corrupted "
            "(a flipped bit or a damaged copy); use an earlier checkpoint or copy it again"
        )
    return ckpt


def load_model_state(model: nn.Module, ckpt: Dict[str, Any], path: str) -> None:
    """Load a checkpoint's weights, with a clear message when they do not fit ``model``."""
    saved = ckpt.get("meta", {}).get("model", {})
    state = ckpt["model"]
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shape:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model ({type(model).__name__}): {len(missing)} "
            f"missing keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}, "
            f"{len(shape)} shape mismatches {shape[:3]}. It was written for model config "
            f"{saved or '(unknown)'}"
        )
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- inspection


def _tensors(obj: Any) -> List[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def describe_checkpoint(path: str) -> Dict[str, Any]:
    """What a checkpoint holds, as plain JSON-able values (read safely, checksum verified)."""
    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta", {})
    weights = list(ckpt["model"].values())
    state = ckpt.get("train_state")
    cfg = meta.get("config", {})
    summary = {
        "model": cfg.get("model", meta.get("model")),
        "data": {k: cfg.get("data", {}).get(k) for k in ("name", "root")},
        "input": meta.get("input"),
        "sampler": cfg.get("sampler"),
        "optim": {k: cfg.get("optim", {}).get(k) for k in ("name", "lr", "weight_decay")},
        "epochs": cfg.get("schedule", {}).get("epochs"),
        "seed": cfg.get("seed"),
    }
    return {
        "path": os.path.abspath(path),
        "file_bytes": os.path.getsize(path),
        "format_version": int(ckpt.get("format_version", 0)),
        "checksum": "verified" if "checksum" in ckpt else "absent (older file)",
        "model": meta.get("model"),
        "num_classes": meta.get("num_classes"),
        "feature_dim": meta.get("feature_dim"),
        "dataset": meta.get("dataset"),
        "epoch": meta.get("epoch"),
        "step": meta.get("step"),
        "iter_in_epoch": state.get("iter", 0) if state else None,
        "metrics": meta.get("metrics", {}),
        "partreid_version": meta.get("partreid_version"),
        "torch_version": meta.get("torch_version"),
        "has_optimizer_state": bool(state and "optimizer" in state),
        "weights": {
            "tensors": len(weights),
            "parameters": int(sum(t.numel() for t in weights)),
            "bytes": int(sum(t.numel() * t.element_size() for t in weights)),
        },
        "train_state_bytes": int(
            sum(t.numel() * t.element_size() for t in _tensors(state)) if state else 0
        ),
        "config": summary,
    }


def inspect_checkpoint(path: str, as_json: bool = False) -> None:
    """Print :func:`describe_checkpoint` for people, or as JSON with ``as_json``."""
    d = describe_checkpoint(path)
    if as_json:
        print(json.dumps(d, indent=2, sort_keys=True, default=str))
        return
    w = d["weights"]
    metrics = (
        "  ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in d["metrics"].items()
        )
        or "(none)"
    )
    lines = [
        f"checkpoint   {d['path']} ({d['file_bytes'] / 1e6:.2f} MB, format {d['format_version']}, "
        f"checksum {d['checksum']})",
        f"model        {d['model']}",
        f"classes      {d['num_classes']}   feature dim {d['feature_dim']}",
        f"data set     {d['dataset']}",
        f"progress     epoch {d['epoch']}, step {d['step']}"
        + (f" ({d['iter_in_epoch']} batches into the next epoch)" if d["iter_in_epoch"] else ""),
        f"metrics      {metrics}",
        f"weights      {w['tensors']} tensors, {w['parameters'] / 1e6:.3f}M values, "
        f"{w['bytes'] / 1e6:.2f} MB",
        "optimizer    "
        + (
            f"yes ({d['train_state_bytes'] / 1e6:.2f} MB of training state; resumable)"
            if d["has_optimizer_state"]
            else "no (inference-only export)"
        ),
        f"versions     partreid {d['partreid_version']}, torch {d['torch_version']}",
        "config       " + json.dumps(d["config"], default=str),
    ]
    print("\n".join(lines))
