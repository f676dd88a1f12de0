"""``partreid export``: inference-only weights, or an ONNX model that checks itself.

``--format weights`` rewrites a training checkpoint without its ``train_state`` (optimizer,
scheduler, scaler and RNG states): the same model, a fraction of the bytes.

``--format onnx`` writes a graph with a dynamic batch axis through ``torch.export`` (the dynamo
exporter; the legacy tracer cannot follow the models' Python stripe arithmetic). RMGL's
test-time activation balanced pooling (ABP) and its receptive-partition path are exported as
they run in PyTorch: ABP's ``cummax`` has no ONNX translation, so it is decomposed first into
plain tensor ops (:func:`cummax_decomposition`, a masked max over the ``k - 1`` borders).

Flip-averaging is inside the graph (input ``images`` N x 3 x H x W -> ``features`` N x D, the
average of each image's and its mirror image's features, computed as one 2N batch): the ONNX
file alone then gives exactly the feature ``partreid eval`` uses, in any runtime, without the
consumer having to know the trick. ``--no-flip`` exports the bare model instead (the runtime
then flips when asked). Preprocessing (input size, mean/std), feature_dim, the model name and
the flip flag are stored in the ONNX ``metadata_props`` (key ``partreid``, JSON), so
``Extractor("model.onnx")`` and ``partreid extract model.onnx ...`` need nothing else.

The graph's input is RGB scaled to [0, 1] and normalised with the ImageNet mean/std
(:data:`GRAPH_INPUT_MEAN`, :data:`GRAPH_INPUT_STD`): what BoxMOT and most tracker runtimes feed.
A model trained with another normalisation gets a first layer that renormalises
(:class:`Renormalise`), so the file gives the model's features from the usual input, and its
metadata says so (format ``partreid-onnx/2``).

After writing, ONNX Runtime's features are compared with PyTorch's on real images (the
checkpoint's data set when its folder exists, else ``--check-images DIR``, else synthetic images
with a message saying so); above ``tolerance`` on L2-normalised features the command fails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..checkpoint import load_checkpoint, save_checkpoint
from ..data.io import list_image_files
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import InvalidValueError, PartreidError
from ..inference import Extractor, FlipAveraged, OnnxModel, model_from_checkpoint
from ..inference.exported import ONNX_FORMAT, ONNX_FORMAT_SELF_NORMALISING
from ..utils.extras import require

log = logging.getLogger("partreid")

CHECK_IMAGES = 16
# the input every exported graph takes: RGB / 255, ImageNet-normalised (BoxMOT's ReID runtimes
# feed exactly this and cannot be told otherwise: their mean/std are fixed in code)
GRAPH_INPUT_MEAN = tuple(IMAGENET_MEAN)
GRAPH_INPUT_STD = tuple(IMAGENET_STD)


class OnnxParityError(PartreidError, RuntimeError):
    """ONNX Runtime's features differ from PyTorch's by more than the tolerance."""


# --------------------------------------------------------------------------------------------
# inference-only weights
# --------------------------------------------------------------------------------------------
def export_weights(checkpoint: str, out: str) -> Dict[str, Any]:
    """Write ``checkpoint`` without its training state to ``out``; return the two sizes."""
    ckpt = load_checkpoint(checkpoint)
    model_from_checkpoint(ckpt, checkpoint)  # refuses weights that do not fit their description
    if os.path.abspath(out) == os.path.abspath(checkpoint):
        raise InvalidValueError(f"--out {out} is the checkpoint itself; choose another file")
    save_checkpoint(out, ckpt["model"], ckpt["meta"])
    size_in, size_out = os.path.getsize(checkpoint), os.path.getsize(out)
    return {
        "checkpoint": checkpoint,
        "out": out,
        "bytes_in": size_in,
        "bytes_out": size_out,
        "ratio": size_in / max(size_out, 1),
        "had_train_state": "train_state" in ckpt,
    }


# --------------------------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------------------------
def cummax_decomposition(x: torch.Tensor, dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``torch.cummax`` from ops ONNX has: a masked max over a lower-triangular L x L mask.

    Returns the same ``(values, indices)`` as ``torch.cummax`` (index of the last maximum so
    far on ties). L is the length along ``dim`` (ABP's ``k``: a handful), so L x L is tiny.
    """
    dim = dim % x.dim()
    xt = x.movedim(dim, -1)
    length = xt.shape[-1]
    pos = torch.arange(length, device=x.device)
    mask = pos[None, :] <= pos[:, None]  # [j, i]: element i is in the prefix ending at j
    if x.dtype.is_floating_point:
        low = torch.finfo(x.dtype).min
    else:
        low = torch.iinfo(x.dtype).min
    rows = torch.where(mask, xt.unsqueeze(-2), torch.full((), low, dtype=x.dtype))
    values = rows.amax(dim=-1)
    hit = mask & (xt.unsqueeze(-2) == values.unsqueeze(-1))
    indices = torch.where(hit, pos, torch.full((), -1, dtype=torch.long)).amax(dim=-1)
    return values.movedim(-1, dim), indices.movedim(-1, dim)


def onnx_metadata(
    info, flip: bool, input_norm: Optional[Tuple[Sequence[float], Sequence[float]]] = None
) -> Dict[str, str]:
    """The ``metadata_props`` an exported partreid model carries; ``input_norm`` is the
    graph's input ``(mean, std)`` when it differs from the model's own (the graph renormalises)."""
    d = info.to_dict()
    d.pop("path", None)
    meta: Dict[str, Any] = {"format": ONNX_FORMAT, "flip_in_graph": bool(flip), "info": d}
    mean, std = list(info.mean), list(info.std)
    if input_norm is not None:
        mean, std = [float(v) for v in input_norm[0]], [float(v) for v in input_norm[1]]
        meta.update(format=ONNX_FORMAT_SELF_NORMALISING, input={"mean": mean, "std": std})
    return {
        "partreid": json.dumps(meta),
        "model": info.name,
        "input_height": str(info.height),
        "input_width": str(info.width),
        "mean": json.dumps(mean),  # of the graph's input
        "std": json.dumps(std),
        "feature_dim": str(info.feature_dim),
        "flip_in_graph": str(bool(flip)).lower(),
    }


class Renormalise(nn.Module):
    """``model`` taking input normalised with ``(mean, std)`` instead of its own
    ``(model_mean, model_std)``: one per-channel scale and shift in front of it."""

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        model_mean: Sequence[float],
        model_std: Sequence[float],
    ):
        super().__init__()
        self.model = model
        m, s = torch.tensor(mean), torch.tensor(std)
        mm, ms = torch.tensor(model_mean), torch.tensor(model_std)
        # x_model = (x * s + m - mm) / ms
        self.register_buffer("scale", (s / ms).view(1, 3, 1, 1).float())
        self.register_buffer("shift", ((m - mm) / ms).view(1, 3, 1, 1).float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The model's features of images normalised with ``(mean, std)``."""
        return self.model(images * self.scale + self.shift)


def export_graph(
    net: nn.Module, example: torch.Tensor, out: str, metadata: Optional[Dict[str, str]] = None
) -> str:
    """Write ``net`` (input ``images`` -> output ``features``) as ONNX, batch axis dynamic.

    ``torch.export`` traces it; ``cummax`` (ABP) is decomposed into ONNX-able ops first.
    """
    onnx = require("onnx", "deploy")
    require("onnxscript", "deploy")
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.export.export(net.eval(), (example,), dynamic_shapes=({0: batch},))
        program = program.run_decompositions({torch.ops.aten.cummax.default: cummax_decomposition})
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}.onnx"
    try:
        torch.onnx.export(
            program,
            (example,),
            tmp,
            input_names=["images"],
            output_names=["features"],
            dynamo=True,
            external_data=False,  # else a NAME.data file of weights is left beside the output
            verbose=False,
        )
        proto = onnx.load(tmp)
        del proto.metadata_props[:]
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def graph_input_norm(info) -> Optional[Tuple[Sequence[float], Sequence[float]]]:
    """The exported graph's input ``(mean, std)`` when the model's own differ from it (the
    graph then renormalises), else None."""
    same = np.allclose(info.mean, GRAPH_INPUT_MEAN, atol=1e-6) and np.allclose(
        info.std, GRAPH_INPUT_STD, atol=1e-6
    )
    return None if same else (GRAPH_INPUT_MEAN, GRAPH_INPUT_STD)


def export_onnx(model: nn.Module, out: str, flip: bool = True) -> str:
    """Write ``model`` (from :func:`partreid.load_model`) as ONNX with a dynamic batch axis,
    flip-averaging in the graph unless ``flip=False``, preprocessing in its metadata; the
    graph takes ImageNet-normalised RGB whatever the model was trained with."""
    info = model.info
    model = model.cpu().eval()
    net = FlipAveraged(model) if flip else model
    norm = graph_input_norm(info)
    if norm is not None:
        net = Renormalise(net, norm[0], norm[1], info.mean, info.std)
    example = torch.randn(2, 3, info.height, info.width)
    return export_graph(net, example, out, onnx_metadata(info, flip, norm))


# --------------------------------------------------------------------------------------------
# parity check
# --------------------------------------------------------------------------------------------
def _dataset_images(info) -> List[str]:
    """Images under the checkpoint's data root, when that folder exists here (read only: no
    data set is built, so nothing is generated or rewritten)."""
    root = (info.config or {}).get("data", {}).get("root")
    if not root or not os.path.isdir(root):
        return []
    paths, _ = list_image_files(root)
    step = max(1, len(paths) // CHECK_IMAGES)
    return paths[::step][:CHECK_IMAGES]


def check_images_for(info, check_dir: Optional[str]) -> Tuple[List, str]:
    """Images for the parity check and where they come from (data set, folder or synthetic)."""
    if check_dir:
        paths, _ = list_image_files(check_dir)
        if not paths:
            raise InvalidValueError(f"--check-images {check_dir}: no images found there")
        step = max(1, len(paths) // CHECK_IMAGES)
        return paths[::step][
            :CHECK_IMAGES
        ], f"{len(paths[::step][:CHECK_IMAGES])} images from {check_dir}"
    paths = _dataset_images(info)
    if paths:
        return paths, f"{len(paths)} images of the checkpoint's data set ({info.dataset})"
    print(
        "note: the checkpoint's data set folder is not here and no --check-images DIR was given; "
        "checking ONNX against PyTorch on synthetic noise images only"
    )
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (info.height, info.width, 3), dtype=np.uint8)
        for _ in range(CHECK_IMAGES)
    ]
    return images, f"{CHECK_IMAGES} synthetic images"


def _normalise(f: np.ndarray) -> np.ndarray:
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def onnx_parity(onnx_path: str, model: nn.Module, images: List) -> Dict[str, float]:
    """Largest |difference| of L2-normalised features of an exported model (ONNX in ONNX
    Runtime, or the OpenVINO IR converted from it) vs PyTorch, at batch 1 and at batch
    len(images); raw-feature differences too."""
    torch_ext = Extractor(model, device="cpu", batch_size=len(images), num_workers=0)
    onnx_ext = Extractor(onnx_path, device="cpu", batch_size=len(images), num_workers=0)
    onnx_ext.flip = torch_ext.flip = True
    ref = torch_ext(images)
    full = onnx_ext(images)
    onnx_ext.batch_size = 1
    single = onnx_ext(images[:3])
    diff = max(
        float(np.abs(_normalise(full) - _normalise(ref)).max()),
        float(np.abs(_normalise(single) - _normalise(ref[:3])).max()),
    )
    return {"max_diff_normalised": diff, "max_diff_raw": float(np.abs(full - ref).max())}


def onnx_cache_path(checkpoint: str, cache_dir: str) -> str:
    """Where :func:`cached_onnx` keeps ``checkpoint``'s export: keyed by its real path, size
    and mtime and by the partreid and torch versions that exported it."""
    st = os.stat(checkpoint)
    key = [os.path.realpath(checkpoint), st.st_size, st.st_mtime_ns, __version__, torch.__version__]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]
    return os.path.join(cache_dir, "onnx", f"{digest}.onnx")


def cached_onnx(model: nn.Module, checkpoint: str, cache_dir: str, tolerance: float = 1e-4) -> str:
    """``model`` (loaded from ``checkpoint``) as a flip-averaging ONNX file under ``cache_dir``:
    exported and checked against PyTorch once, reused while the checkpoint is unchanged.

    Raises :class:`OnnxParityError` when ONNX Runtime's features differ from PyTorch's by more
    than ``tolerance`` (L2-normalised) on noise images; nothing is cached then.
    """
    path = onnx_cache_path(checkpoint, cache_dir)
    if os.path.isfile(path):
        try:
            OnnxModel(path, device="cpu")
            log.info("ONNX model for %s: %s (cached)", checkpoint, path)
            return path
        except Exception as exc:  # a broken cache entry is rebuilt, and said so
            log.warning("cached ONNX model %s is unreadable (%s); exporting again", path, exc)
    t0 = time.time()
    log.info("exporting %s to ONNX for ONNX Runtime (once; cached in %s)", checkpoint, path)
    info = model.info
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (info.height, info.width, 3), np.uint8) for _ in range(4)]
    tmp = f"{path}.unchecked{os.getpid()}.onnx"
    try:
        export_onnx(model, tmp, flip=True)
        diff = onnx_parity(tmp, model, images)["max_diff_normalised"]
        if not diff <= tolerance:
            raise OnnxParityError(
                f"ONNX Runtime's features of {checkpoint} differ from PyTorch's by {diff:.2e} "
                f"(tolerance {tolerance:g})"
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    log.info("ONNX export checked (largest difference %.1e) in %.1f s", diff, time.time() - t0)
    return path
