"""The one rule for "were these features made by this model?", asked wherever features of two
origins meet: a store and the checkpoint that ingests into it, serves it or embeds a query for
it; a gallery (features file or index) and the query features or the checkpoint that embeds
query images for it.

Each side is a :class:`ModelDescription` (name, feature dimension, fingerprint, checkpoint),
read from what that side keeps: a store's ``info["model"]``, a features file's ``meta`` or a
loaded model's ``info`` (:meth:`partreid.inference.ModelInfo.fingerprint`). The rule
(:func:`check_same_model`):

* different feature dimensions: refused;
* different fingerprints (another model, or another training run of it): refused;
* the same fingerprint: accepted, whatever the checkpoint paths (a checkpoint, its weights-only
  export and its ONNX export share one);
* a side without a fingerprint (features files written before partreid recorded it): the two
  cannot be told apart, so the pair is accepted; when both name their checkpoint and the
  paths differ, a warning says so.

A refusal is a :class:`ModelMismatchError` naming both models and what to do.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional

from ..errors import InvalidValueError

log = logging.getLogger("partreid")


class ModelMismatchError(InvalidValueError):
    """Features of one model met features (or the checkpoint) of another."""


@dataclass(frozen=True)
class ModelDescription:
    """What identifies the model behind some features; empty / 0 where a side does not say."""

    name: str = ""
    feature_dim: int = 0
    fingerprint: str = ""
    checkpoint: str = ""

    @classmethod
    def of_model(cls, info: Any, feature_dim: int, checkpoint: str = "") -> ModelDescription:
        """A loaded model's: ``info`` is its :class:`~partreid.inference.ModelInfo`."""
        return cls(str(info.name), int(feature_dim), str(info.fingerprint()), checkpoint or "")

    @classmethod
    def from_record(
        cls, record: Optional[Mapping[str, Any]], feature_dim: Optional[int] = None
    ) -> ModelDescription:
        """From a store's ``info["model"]`` (``name``) or a features file's ``meta`` (``model``);
        ``feature_dim`` (the store's or the array's) wins over the recorded one."""
        rec = record or {}
        name = rec.get("name", rec.get("model", ""))
        dim = feature_dim if feature_dim is not None else (rec.get("feature_dim") or 0)
        return cls(
            str(name or ""),
            int(dim),
            str(rec.get("fingerprint") or ""),
            str(rec.get("checkpoint") or ""),
        )

    def to_record(self) -> Dict[str, Any]:
        """Plain values, as a store records them."""
        return asdict(self)

    def __str__(self) -> str:
        said = [
            f"{self.feature_dim}-d features" if self.feature_dim else "features of unknown size"
        ]
        if self.fingerprint:
            said.append(f"fingerprint {self.fingerprint}")
        if self.checkpoint:
            said.append(f"from {self.checkpoint}")
        who = f"model {self.name!r}" if self.name else "a model of unknown name"
        return f"{who} ({', '.join(said)})"


def check_same_model(
    kept: ModelDescription, kept_what: str, given: ModelDescription, given_what: str, remedy: str
) -> Optional[str]:
    """Refuse ``given`` unless it is the model of ``kept`` (see the module docstring); return the
    warning logged when that cannot be told, else None.

    ``kept_what`` / ``given_what`` name the two sides in the message (``"store /data/site"``,
    ``"checkpoint b.pth"``); ``remedy`` says what to do instead."""
    if kept.feature_dim and given.feature_dim and kept.feature_dim != given.feature_dim:
        why = "The feature dimensions differ"
    elif kept.fingerprint and given.fingerprint and kept.fingerprint != given.fingerprint:
        why = "The fingerprints differ (another model, or another training run of it)"
    else:
        why = ""
    if why:
        raise ModelMismatchError(
            f"{kept_what} holds features of {kept}; {given_what} gives features of {given}. "
            f"{why}, so the two cannot be compared: {remedy}"
        )
    if kept.fingerprint and given.fingerprint:
        return None
    a, b = kept.checkpoint, given.checkpoint
    if a and b and os.path.abspath(a) != os.path.abspath(b):
        text = (
            f"{kept_what} was made with {a} and {given_what} with {b}; without a fingerprint "
            "on both sides partreid cannot tell whether they are the same model"
        )
        log.warning("%s", text)
        return text
    return None
