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
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import zipfile
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

FORMAT = "partreid"
FORMAT_VERSION = 2


class CheckpointError(RuntimeError):
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
    from . import __version__

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


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Read a partreid checkpoint safely (``weights_only``); one clear line for anything else."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled Python objects that could run code when "
            f"loaded ({first[:160]}); partreid checkpoints hold only tensors and plain values"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated, corrupted "
            f"or not a PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else ''})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not a partreid checkpoint (no 'format: partreid' header; it holds {keys})"
        )
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer partreid (format "
            f"{ckpt['format_version']}, this one reads {FORMAT_VERSION}); "
            "upgrade partreid"
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
