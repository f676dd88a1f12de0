"""The features file: each feature with its source, in one ``.npz`` that numpy reads directly.

    feats = Features.load("gallery.npz")        # or: np.load("gallery.npz")["features"]
    feats.features      # float32 (N, D), as the model produced them (flip-averaged, not normalised)
    feats.paths         # str (N,): image path, or the video path for crops cut from a video
    feats.pids, feats.camids          # int64 (N,): -1 where unknown
    feats.frames, feats.track_ids     # int64 (N,): video frame / MOT track id, -1 for images
    feats.boxes         # float32 (N, 4): x, y, w, h in the frame (NaN for images)
    feats.meta          # dict: model, checkpoint, feature_dim, distance, normalize, flip, ...

Plain ``np.load`` sees the same arrays (``meta`` is a JSON string). ``partreid extract`` writes
it; ``index``, ``search`` and ``serve`` read it. Nothing in it is pickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import numpy as np

from .errors import InvalidValueError, PartreidError

FEATURES_FORMAT = "partreid-features/1"
_ARRAYS = ("features", "paths", "pids", "camids", "frames", "track_ids", "boxes")


class FeaturesFileError(PartreidError, ValueError):
    """A features file that is missing, unreadable or not partreid's."""


@dataclass
class Features:
    """Features with their sources; every per-item array has the same length N."""

    features: np.ndarray
    paths: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    frames: np.ndarray
    track_ids: np.ndarray
    boxes: np.ndarray
    meta: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        features: np.ndarray,
        paths: Sequence[str],
        pids: Optional[Sequence[int]] = None,
        camids: Optional[Sequence[int]] = None,
        frames: Optional[Sequence[int]] = None,
        track_ids: Optional[Sequence[int]] = None,
        boxes: Optional[np.ndarray] = None,
        meta: Optional[Dict[str, Any]] = None,
    ) -> Features:
        """Fill the optional columns with their 'unknown' values and check the lengths."""
        feats = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
        n = feats.shape[0]

        def ints(v):
            return np.full(n, -1, np.int64) if v is None else np.asarray(v, dtype=np.int64)

        out = cls(
            features=feats,
            paths=np.asarray(list(paths), dtype=str) if n else np.zeros(0, dtype="<U1"),
            pids=ints(pids),
            camids=ints(camids),
            frames=ints(frames),
            track_ids=ints(track_ids),
            boxes=np.full((n, 4), np.nan, np.float32)
            if boxes is None
            else np.asarray(boxes, dtype=np.float32).reshape(n, 4),
            meta=dict(meta or {}),
        )
        out.validate("features")
        return out

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        """The feature dimension D."""
        return int(self.features.shape[1])

    def validate(self, where: str) -> None:
        """Raise :class:`FeaturesFileError` unless every array has N rows and the right shape."""
        if self.features.ndim != 2:
            raise FeaturesFileError(
                f"{where}: 'features' must be N x D, got shape {self.features.shape}"
            )
        n = len(self)
        for name in _ARRAYS[1:]:
            arr = getattr(self, name)
            if arr.shape[0] != n:
                raise FeaturesFileError(
                    f"{where}: '{name}' has {arr.shape[0]} rows but there are {n} features"
                )
        if self.boxes.shape != (n, 4):
            raise FeaturesFileError(f"{where}: 'boxes' must be N x 4, got {self.boxes.shape}")

    def save(self, path: str) -> str:
        """Write ``path`` (``.npz`` is appended when missing), atomically; return the path."""
        if not path.endswith(".npz"):
            path += ".npz"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        meta = {"format": FEATURES_FORMAT, **self.meta}
        tmp = f"{path}.tmp{os.getpid()}.npz"
        np.savez(tmp, **{k: getattr(self, k) for k in _ARRAYS}, meta=np.asarray(json.dumps(meta)))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str) -> Features:
        """Read a features file written by :meth:`save`; a clear error for anything else."""
        if not os.path.isfile(path):
            raise FeaturesFileError(f"features file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in (*_ARRAYS, "meta") if k not in z.files]
                if missing:
                    raise FeaturesFileError(
                        f"{path} is not a partreid features file (missing {missing}; it holds "
                        f"{sorted(z.files)[:8]}); write one with `partreid extract`"
                    )
                arrays = {k: z[k] for k in _ARRAYS}
                meta = json.loads(str(z["meta"]))
        except FeaturesFileError:
            raise
        except Exception as exc:  # zip, pickle and value errors from a foreign or broken file
            raise FeaturesFileError(
                f"cannot read features file {path}: {type(exc).__name__}: {exc}"
            ) from None
        if meta.get("format") != FEATURES_FORMAT:
            raise FeaturesFileError(
                f"{path}: unknown features format {meta.get('format')!r} "
                f"(this partreid reads {FEATURES_FORMAT})"
            )
        out = cls(**arrays, meta=meta)
        out.validate(path)
        return out

    def subset(self, index: np.ndarray) -> Features:
        """The rows ``index`` (an index array or a boolean mask), same meta."""
        return Features(**{k: getattr(self, k)[index] for k in _ARRAYS}, meta=dict(self.meta))

    @staticmethod
    def concat(parts: Sequence[Features]) -> Features:
        """Rows of ``parts`` one after the other (e.g. the shards of a distributed extract)."""
        if not parts:
            raise InvalidValueError("nothing to concatenate")
        dims = {p.dim for p in parts if len(p)}
        if len(dims) > 1:
            raise FeaturesFileError(f"cannot join features of different dimensions {sorted(dims)}")
        return Features(
            **{k: np.concatenate([getattr(p, k) for p in parts]) for k in _ARRAYS},
            meta=dict(parts[0].meta),
        )

    def check_dim(self, dim: int, what: str, where: str) -> None:
        """A clear error when these features do not have dimension ``dim`` (that of ``what``)."""
        if self.dim != dim:
            raise FeaturesFileError(
                f"{where} holds {self.dim}-d features but {what} has {dim}-d features; "
                "were they made by the same model?"
            )
