"""INT8 post-training static quantisation of an exported model, and what it costs in mAP.

NNCF (the ``openvino`` extra) quantises an exported graph with statistics of calibration crops
from the checkpoint's training set (``--calibration DIR`` for another folder): weights per
channel, activations per tensor, INT8 wherever the runtime has an INT8 kernel. An OpenVINO IR
comes out as an INT8 IR (run by OpenVINO), an ONNX file as a QDQ ONNX file (run by ONNX
Runtime). Both keep the partreid metadata, with ``precision: int8`` and how they were
calibrated.

The price is measured, not assumed: :func:`held_out_map` evaluates the float32 and the INT8
model on the query/gallery split of the checkpoint's data set (never seen in training, nor in
calibration) with the checkpoint's own distance; ``partreid export --int8`` prints both mAPs
and refuses the INT8 model when it loses more than ``--max-map-drop`` points.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..data import build_dataset, read_image
from ..data.io import list_image_files
from ..errors import InvalidValueError, PartreidError
from ..inference import Extractor, open_exported
from ..metrics.distance import compute_distance
from ..metrics.rank import evaluate_rank, rank_summary
from ..utils.extras import require
from .openvino import save_openvino

log = logging.getLogger("partreid")

CALIBRATION_IMAGES = 300  # NNCF's default subset size
HELD_OUT_MAX_IMAGES = 4000  # larger query+gallery splits are cut to a subset of identities
METADATA_KEY = ["framework", "partreid"]  # an OpenVINO IR's copy of the ONNX metadata


class QuantizationError(PartreidError, RuntimeError):
    """INT8 quantisation cannot run or loses more accuracy than allowed."""


def checkpoint_dataset(info):
    """The checkpoint's data set (read where its folder is here), else None."""
    data = (info.config or {}).get("data", {})
    root = data.get("root")
    if not data.get("name") or not root or not os.path.isdir(root):
        return None
    return build_dataset(data["name"], root, **dict(data.get("options") or {}))


def _spread(items: Sequence, count: int) -> List:
    step = max(1, len(items) // count)
    return list(items[::step][:count])


def calibration_images(
    info, folder: Optional[str] = None, count: int = CALIBRATION_IMAGES
) -> Tuple[List[str], str]:
    """Calibration crops (spread over the set) and where they come from: ``folder``, else the
    training split of the checkpoint's data set; neither is one clear error."""
    if folder:
        paths, _ = list_image_files(folder)
        if not paths:
            raise InvalidValueError(f"--calibration {folder}: no images found there")
        picked = _spread(paths, count)
        return picked, f"{len(picked)} images from {folder}"
    ds = checkpoint_dataset(info)
    if ds is None or not ds.train:
        root = (info.config or {}).get("data", {}).get("root") or "(none recorded)"
        raise InvalidValueError(
            f"INT8 calibration needs crops of the training set: the checkpoint's data set folder "
            f"{root} is not here; give --calibration DIR (a folder of training crops)"
        )
    picked = _spread([p for p, _, _ in ds.train], count)
    return picked, f"{len(picked)} training images of {info.dataset or ds.name}"


def _int8_metadata(meta: str, origin: str, count: int) -> str:
    nncf = require("nncf", "openvino")
    d = json.loads(meta)
    d["precision"] = "int8"
    d["quantization"] = {
        "method": "post-training static (NNCF)",
        "nncf": nncf.__version__,
        "calibration": origin,
        "images": int(count),
    }
    return json.dumps(d)


def quantize_int8(fp32_path: str, out: str, images: Sequence, origin: str = "") -> str:
    """Write the INT8 version of the exported ``fp32_path`` (.onnx or .xml) to ``out`` (same
    kind), calibrated on ``images`` (paths or RGB arrays) preprocessed as the model expects."""
    nncf = require("nncf", "openvino")
    nncf.set_log_level(logging.ERROR)
    fp32 = open_exported(fp32_path, "cpu")
    tf = fp32.transform()
    batches = [tf(_pil(im)).unsqueeze(0).numpy() for im in images]
    if not batches:
        raise QuantizationError("INT8 calibration needs at least one image")
    if fp32_path.lower().endswith(".onnx"):
        onnx = require("onnx", "deploy")
        proto = onnx.load(fp32_path)
        name = proto.graph.input[0].name
        q = nncf.quantize(
            proto, nncf.Dataset(batches, lambda x: {name: x}), subset_size=len(batches)
        )
        props = {p.key: p.value for p in proto.metadata_props}
        props["partreid"] = _int8_metadata(props["partreid"], origin, len(batches))
        del q.metadata_props[:]
        for key, value in props.items():
            entry = q.metadata_props.add()
            entry.key, entry.value = key, value
        tmp = f"{out}.tmp{os.getpid()}.onnx"
        onnx.save(q, tmp)
        os.replace(tmp, out)
        return out
    ov = require("openvino", "openvino")
    model = ov.Core().read_model(fp32_path)
    q = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
    meta = model.get_rt_info(METADATA_KEY).astype(str)
    q.set_rt_info(_int8_metadata(meta, origin, len(batches)), METADATA_KEY)
    return save_openvino(q, out)


def _pil(image) -> Image.Image:
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    return read_image(str(image))


def held_out_split(info, max_images: int = HELD_OUT_MAX_IMAGES):
    """``(query, gallery, note)`` of the checkpoint's data set; None when it has none here.
    Past ``max_images`` only a spread of the query identities (and their gallery) is kept."""
    ds = checkpoint_dataset(info)
    if ds is None or not ds.query or not ds.gallery:
        return None
    query, gallery = ds.query, ds.gallery
    note = f"{len(query)} queries, {len(gallery)} gallery images of {info.dataset or ds.name}"
    if len(query) + len(gallery) > max_images:
        pids = sorted({pid for _, pid, _ in query})
        keep = set(_spread(pids, max(1, len(pids) * max_images // (len(query) + len(gallery)))))
        query = [it for it in query if it[1] in keep]
        gallery = [it for it in gallery if it[1] in keep]
        note = (
            f"{len(query)} queries, {len(gallery)} gallery images ({len(keep)} of "
            f"{len(pids)} query identities) of {info.dataset or ds.name}"
        )
    return query, gallery, note


def held_out_map(model: Any, info, query: Sequence, gallery: Sequence) -> Dict[str, float]:
    """mAP and rank-1 of ``model`` (checkpoint, exported file, module) on a query/gallery
    split, with the checkpoint's evaluation distance (and normalisation)."""
    ext = Extractor(model, device="cpu", batch_size=64, num_workers=0, progress=False)
    qf = torch.from_numpy(ext([p for p, _, _ in query]))
    gf = torch.from_numpy(ext([p for p, _, _ in gallery]))
    ev = (info.config or {}).get("eval", {})
    if ev.get("normalize"):
        qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    dist = compute_distance(qf, gf, metric=ev.get("distance", "euclidean"))
    r = evaluate_rank(
        dist,
        np.array([pid for _, pid, _ in query]),
        np.array([pid for _, pid, _ in gallery]),
        np.array([c for _, _, c in query]),
        np.array([c for _, _, c in gallery]),
    )
    m = rank_summary(r, name="held-out split")
    return {"mAP": m["mAP"], "rank1": m["rank1"]}


def feature_agreement(path_a: str, path_b: str, images: Sequence) -> Tuple[float, float]:
    """Mean and min cosine similarity of two exported models' features of ``images``."""
    fa = Extractor(path_a, device="cpu", num_workers=0, progress=False)(list(images))
    fb = Extractor(path_b, device="cpu", num_workers=0, progress=False)(list(images))
    cos = np.sum(fa * fb, axis=1) / np.maximum(
        np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1), 1e-12
    )
    return float(cos.mean()), float(cos.min())
