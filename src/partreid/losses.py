"""Losses and the one generic loop that applies them to a model's named outputs.

A config lists loss terms::

    losses:
      - {type: cross_entropy, output: logits, weight: 1.0, label_smoothing: 0.1}
      - {type: triplet, output: triplet, weight: 1.0, margin: 1.2}
      - {type: mse, output: mse, weight: 1.0, reduction: sum}

and :class:`LossComputer` applies each term to every item of the model output of that
name (a list), sums the items (``reduce: sum``, the papers' formulas) or averages them
(``reduce: mean``), multiplies by the weight and returns the total plus each term's value.
"""

from __future__ import annotations

import inspect
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InvalidValueError, UnknownNameError


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Softmax cross-entropy, optionally with label smoothing (Szegedy et al.)."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """N x N euclidean distances, numerically safe at zero."""
    x = x.float()
    sq = x.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp_min(1e-12)
    return d2.sqrt()


def triplet_batch_hard(
    features: torch.Tensor, targets: torch.Tensor, margin: Optional[float] = 0.3
) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017).

    For each anchor: hardest positive (largest distance, same id) and hardest negative
    (smallest distance, other id). ``margin=None`` gives the soft margin
    ``log(1 + exp(d_ap - d_an))``. Anchors without a positive or a negative are skipped.
    """
    dist = pairwise_euclidean(features)
    same = targets[:, None] == targets[None, :]
    eye = torch.eye(len(targets), dtype=torch.bool, device=targets.device)
    pos = same & ~eye
    neg = ~same
    valid = pos.any(1) & neg.any(1)
    if not valid.any():
        return dist.sum() * 0.0
    d_ap = dist.masked_fill(~pos, float("-inf")).amax(1)[valid]
    d_an = dist.masked_fill(~neg, float("inf")).amin(1)[valid]
    if margin is None:
        return F.softplus(d_ap - d_an).mean()
    return F.relu(d_ap - d_an + margin).mean()


def mse_supervision(
    pred: torch.Tensor, target: torch.Tensor, reduction: str = "sum"
) -> torch.Tensor:
    """Feature supervision ``||pred - target||_2^2``, averaged over the batch.

    ``reduction="sum"`` sums the squared error over feature dimensions (the CGPN paper's
    formula); ``"mean"`` averages over them (``F.mse_loss``).
    """
    err = (pred.float() - target.float()).pow(2).flatten(1)
    if reduction == "sum":
        return err.sum(1).mean()
    if reduction == "mean":
        return err.mean()
    raise InvalidValueError(f"mse reduction must be 'sum' or 'mean', got {reduction!r}")


def _ce_term(item, targets, label_smoothing: float = 0.0):
    return cross_entropy(item, targets, label_smoothing)


def _triplet_term(item, targets, margin: Optional[float] = 0.3):
    return triplet_batch_hard(item, targets, margin)


def _mse_term(item, targets, reduction: str = "sum"):
    pred, target = item
    return mse_supervision(pred, target, reduction)


LOSSES = {
    "cross_entropy": _ce_term,
    "triplet": _triplet_term,
    "mse": _mse_term,
}

_TERM_KEYS = ("type", "output", "weight", "reduce", "name")


class LossComputer(nn.Module):
    """Applies configured loss terms to a model's named outputs (one loop for every model)."""

    def __init__(self, terms: Sequence[Dict]):
        super().__init__()
        self.terms: List[Tuple[str, str, str, float, str, Dict]] = []
        for i, spec in enumerate(terms):
            spec = dict(spec)
            where = f"losses[{i}]"
            kind = spec.get("type")
            if kind not in LOSSES:
                raise UnknownNameError(
                    f"{where}.type: unknown loss {kind!r}; valid: {sorted(LOSSES)}"
                )
            fn = LOSSES[kind]
            params = {k: v for k, v in spec.items() if k not in _TERM_KEYS}
            valid = [p for p in inspect.signature(fn).parameters if p not in ("item", "targets")]
            bad = sorted(set(params) - set(valid))
            if bad:
                raise UnknownNameError(
                    f"{where}: unknown key(s) {bad} for loss {kind!r}; valid: "
                    f"{sorted(valid) + list(_TERM_KEYS)}"
                )
            reduce = spec.get("reduce", "sum")
            if reduce not in ("sum", "mean"):
                raise InvalidValueError(f"{where}.reduce must be 'sum' or 'mean', got {reduce!r}")
            name = spec.get("name", kind)
            self.terms.append(
                (
                    name,
                    kind,
                    spec.get("output", kind),
                    float(spec.get("weight", 1.0)),
                    reduce,
                    params,
                )
            )
        names = [t[0] for t in self.terms]
        if len(set(names)) != len(names):
            raise InvalidValueError(
                f"loss names must be unique, got {names}; set 'name:' on repeated types"
            )

    def forward(
        self, outputs: Dict[str, list], targets: torch.Tensor
    ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Return the weighted total and a dict ``{term name: value}`` for logging."""
        total = None
        parts: Dict[str, float] = {}
        for name, kind, key, weight, reduce, params in self.terms:
            if key not in outputs:
                raise UnknownNameError(
                    f"loss {name!r} reads model output {key!r}, but the model gives "
                    f"{sorted(outputs)}"
                )
            items = outputs[key]
            if len(items) == 0:
                parts[name] = 0.0
                continue
            values = [LOSSES[kind](item, targets, **params) for item in items]
            value = torch.stack(values).sum()
            if reduce == "mean":
                value = value / len(values)
            parts[name] = float(value.detach())
            value = weight * value
            total = value if total is None else total + value
        if total is None:
            raise InvalidValueError(
                "no loss term produced a value: every configured output was empty"
            )
        return total, parts
