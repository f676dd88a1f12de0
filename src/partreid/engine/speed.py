"""The ``train:`` speed switches as three calls for the trainer (and the throughput benchmark).

* :func:`precision` -> :class:`Precision` (autocast on/off and dtype, whether a GradScaler is
  needed): ``train.amp`` + ``train.amp_dtype`` (bf16 needs no scaler; fp16 does).  Autocast is
  CUDA only, as before: on the CPU everything runs in float32.
* :func:`prepare_model` -> the model moved to the device, in channels_last if asked, SyncBN
  under DDP if asked, optionally ``torch.compile``-d (compile after DDP wrapping is the caller's
  choice: pass ``compile_model=False`` here and compile the DDP module instead).
* :func:`input_pipeline` -> ``(cache, augment)`` for ``train.cache_images`` /
  ``train.device_augment``: the uint8 image cache and the batched
  :class:`~partreid.data.device_augment.DeviceAugment`, or ``(None, None)``.

``train.cudnn_benchmark`` is applied by :func:`prepare_model` (a process-wide flag).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..data.device_augment import DeviceAugment, build_image_cache
from ..data.io import Item
from ..errors import InvalidValueError
from ..utils import distributed as D

__all__ = ["Precision", "input_pipeline", "precision", "prepare_model"]


@dataclass(frozen=True)
class Precision:
    """How to run the forward pass: ``torch.autocast(device_type, dtype, enabled)``."""

    enabled: bool
    dtype: torch.dtype
    use_scaler: bool  # float16 needs a GradScaler; bfloat16 does not

    def autocast(self, device: torch.device):
        """The autocast context for ``device``."""
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.enabled)

    def scaler(self) -> torch.amp.GradScaler:
        """A GradScaler (disabled unless float16 autocast is on)."""
        return torch.amp.GradScaler("cuda", enabled=self.use_scaler)


def precision(train_cfg, device: torch.device) -> Precision:
    """Autocast settings from ``train.amp`` / ``train.amp_dtype`` (CUDA only)."""
    name = str(getattr(train_cfg, "amp_dtype", "bfloat16"))
    dtypes = {
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name not in dtypes:
        raise InvalidValueError(f"train.amp_dtype: unknown {name!r}; valid: bfloat16, float16")
    dtype = dtypes[name]
    on = bool(train_cfg.amp) and device.type == "cuda"
    return Precision(on, dtype, on and dtype == torch.float16)


def prepare_model(
    model: nn.Module, train_cfg, device: torch.device, compile_model: Optional[bool] = None
) -> nn.Module:
    """Apply ``sync_bn``, the device, ``channels_last``, ``cudnn_benchmark`` and ``compile``."""
    if getattr(train_cfg, "sync_bn", False):
        model = D.convert_sync_batchnorm(model)
    model = model.to(device)
    if getattr(train_cfg, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(getattr(train_cfg, "cudnn_benchmark", False))
    do_compile = getattr(train_cfg, "compile", False) if compile_model is None else compile_model
    if do_compile:
        model = torch.compile(model)
    return model


def input_pipeline(
    cfg, items: Sequence[Item], generator: Optional[torch.Generator] = None
) -> Tuple[Optional[torch.Tensor], Optional[DeviceAugment]]:
    """``(uint8 cache, DeviceAugment)`` per ``train.cache_images`` / ``train.device_augment``."""
    t = cfg.train
    if t.device_augment and not t.cache_images:
        raise InvalidValueError("train.device_augment=true needs train.cache_images=true")
    if not t.cache_images:
        return None, None
    cache = build_image_cache(items, cfg.input.height, cfg.input.width)
    if torch.cuda.is_available():
        cache = cache.pin_memory()
    aug = None
    if t.device_augment:
        aug = DeviceAugment(
            cfg.transforms,
            cfg.input.height,
            cfg.input.width,
            cfg.input.mean,
            cfg.input.std,
            train=True,
            generator=generator,
            channels_last=bool(t.channels_last),
        )
    return cache, aug
