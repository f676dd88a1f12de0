"""Turn a device name (``auto``, ``cpu``, ``cuda:1``) into a ``torch.device``."""

from __future__ import annotations

import torch

from ..errors import PartreidError


class DeviceError(PartreidError, RuntimeError):
    """A device was asked for that this machine does not have."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; a clear error for CUDA without CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name} was asked for but CUDA is not available; use cpu")
    return torch.device(name)
