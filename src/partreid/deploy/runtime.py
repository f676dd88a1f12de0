"""Which runtime runs a model's forward pass: ONNX Runtime or PyTorch (an exported file,
``.onnx`` or OpenVINO ``.xml``, runs in its own runtime).

``onnx`` runs ONNX Runtime on an export of the checkpoint that is made and checked against
PyTorch once, then cached (:func:`partreid.deploy.export.cached_onnx`); ``torch`` runs the
PyTorch module; ``auto`` is ONNX Runtime on the CPU when the ``deploy`` extra is installed
(1.8x the throughput of PyTorch with the demo model, benchmarks/serve_load.py) and PyTorch
otherwise, also when the export fails (with a warning saying why).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, Optional, Tuple

from torch import nn

from ..errors import InvalidValueError
from ..inference import Extractor, is_exported, load_model
from ..utils.device import resolve_device
from . import export

log = logging.getLogger("partreid")

RUNTIMES = ("auto", "onnx", "torch")


def onnx_available() -> bool:
    """Whether the ONNX packages of the ``deploy`` extra (onnx, onnxruntime, onnxscript) are
    installed."""
    return all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))


def _check_runtime(checkpoint: str, runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise InvalidValueError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    if is_exported(checkpoint) and runtime == "torch":
        raise InvalidValueError(
            f"--runtime torch needs a partreid checkpoint (.pth), not {checkpoint}"
        )


def _onnx_or_module(
    module: nn.Module, checkpoint: str, runtime: str, device: str, cache_dir: str
) -> Any:
    """The cached ONNX export's path when ``runtime`` asks for ONNX Runtime, else ``module``."""
    on_cpu = resolve_device(str(device)).type == "cpu"
    if runtime == "onnx" and not on_cpu:
        raise InvalidValueError(
            f"--runtime onnx runs on the CPU here; use --device cpu, not {device}"
        )
    if runtime == "onnx" or (runtime == "auto" and on_cpu and onnx_available()):
        try:
            return export.cached_onnx(module, checkpoint, cache_dir)
        except Exception as exc:
            if runtime == "onnx":
                raise
            log.warning("ONNX export failed (%s); serving with PyTorch", exc)
    elif runtime == "auto" and on_cpu:
        log.info("serving with PyTorch; `pip install partreid[deploy]` for ONNX Runtime")
    return module


def build_extractor(
    checkpoint: str,
    cache_dir: str,
    runtime: str = "auto",
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int = 2,
) -> Tuple[Extractor, Optional[nn.Module]]:
    """The :class:`~partreid.inference.Extractor` running ``checkpoint`` on ``runtime`` (one of
    :data:`RUNTIMES`), and the PyTorch module (``None`` for an exported file, which runs in its
    own runtime: ONNX Runtime for ``.onnx``, OpenVINO for ``.xml``).

    ``cache_dir`` holds the checked ONNX export; the PyTorch module is returned also when the
    forward pass runs on ONNX Runtime (activation maps need it).
    """
    _check_runtime(checkpoint, runtime)
    module = None
    model: Any = checkpoint
    if not is_exported(checkpoint):
        module = load_model(checkpoint)
        model = _onnx_or_module(module, checkpoint, runtime, device, cache_dir)
    extractor = Extractor(model, device=device, batch_size=batch_size, num_workers=num_workers)
    log.info("model runtime: %s", extractor.backend)
    return extractor, module
