"""Optimizers with per-group learning-rate multipliers, and warm-up + multi-step schedules."""

from __future__ import annotations

import math
import re
from typing import Dict, List

import torch
from torch import nn

from ..errors import InvalidValueError


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, lr_mult: Dict[str, float]
) -> List[dict]:
    """Split parameters into groups by ``lr_mult`` (regex on the parameter name -> multiplier).

    The first pattern that matches a name decides its multiplier; unmatched parameters get 1.
    A pattern that matches nothing is an error (it is almost always a typo).
    """
    patterns = [(re.compile(p), float(m)) for p, m in lr_mult.items()]
    groups: Dict[float, List[torch.Tensor]] = {}
    used = [False] * len(patterns)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mult = 1.0
        for i, (rx, m) in enumerate(patterns):
            if rx.search(name):
                mult, used[i] = m, True
                break
        groups.setdefault(mult, []).append(p)
    unused = [p.pattern for (p, _), u in zip(patterns, used) if not u]
    if unused:
        raise InvalidValueError(
            f"optim.lr_mult pattern(s) {unused} match no parameter of the model"
        )
    return [
        {"params": ps, "lr": lr * m, "lr_mult": m, "weight_decay": weight_decay}
        for m, ps in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam or AdamW from an ``OptimConfig``."""
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.lr_mult)
    name = cfg.name.lower()
    if name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise InvalidValueError(f"optim.name: unknown optimizer {cfg.name!r}; valid: sgd, adam, adamw")


def lr_factor(epoch: float, cfg, base_lr: float) -> float:
    """Learning-rate factor at (fractional) ``epoch``: warm-up, then step decay.

    ``linear`` warm-up goes from ``warmup_start_lr`` to the base lr linearly over
    ``warmup_epochs``; ``exp`` does so geometrically (RMGL's exponential warm-up).
    Decay multiplies by ``gamma`` once for every milestone epoch already reached.
    """
    decay = cfg.gamma ** sum(1 for m in cfg.milestones if int(epoch) >= m)
    if cfg.warmup != "none" and cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        t = epoch / cfg.warmup_epochs
        start = cfg.warmup_start_lr / base_lr
        if cfg.warmup == "linear":
            return (start + (1.0 - start) * t) * decay
        if cfg.warmup == "exp":
            return math.exp(math.log(start) * (1.0 - t)) * decay
        raise InvalidValueError(
            f"schedule.warmup: unknown warm-up {cfg.warmup!r}; valid: none, linear, exp"
        )
    return decay


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg, base_lr: float, iters_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler; call ``step()`` after every optimizer step."""
    if cfg.warmup not in ("none", "linear", "exp"):
        raise InvalidValueError(
            f"schedule.warmup: unknown warm-up {cfg.warmup!r}; valid: none, linear, exp"
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it / iters_per_epoch, cfg, base_lr)
    )
