"""Checkpoints written atomically, with everything ``--resume`` needs to continue exactly."""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn


class CheckpointError(RuntimeError):
    pass


def rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, **payload) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


def load_model_state(model: nn.Module, ckpt: Dict[str, Any], path: str,
                     model_cfg: Optional[Dict[str, Any]] = None, strict_classifier: bool = True) -> None:
    """Load a checkpoint's weights, with a clear message when it belongs to another model."""
    if "model" not in ckpt:
        raise CheckpointError(f"{path} is not a partreid checkpoint (no 'model' entry; keys: "
                              f"{sorted(ckpt)[:8]})")
    saved = ckpt.get("model_cfg", {})
    if model_cfg is not None and saved:
        diffs = {k: (saved.get(k), model_cfg.get(k)) for k in set(saved) | set(model_cfg)
                 if saved.get(k) != model_cfg.get(k) and k != "pretrained"}
        if "name" in diffs or "backbone" in diffs:
            raise CheckpointError(
                f"checkpoint {path} holds model {saved.get('name')!r} (backbone "
                f"{saved.get('backbone')!r}) but the config builds {model_cfg.get('name')!r} "
                f"(backbone {model_cfg.get('backbone')!r}); use the config it was trained with "
                "(its run folder has config.yaml)")
    state = ckpt["model"]
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if not strict_classifier:
        shape = [k for k in shape if "classifier" not in k]
    if missing or unexpected or shape:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model ({type(model).__name__}): {len(missing)} "
            f"missing keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}, "
            f"{len(shape)} shape mismatches {shape[:3]}. It was written for model config "
            f"{saved or '(unknown)'}")
    model.load_state_dict({k: v for k, v in state.items() if k not in shape or not strict_classifier
                           and "classifier" not in k}, strict=False)
