"""``partreid export``: inference-only weights, or an ONNX / OpenVINO model checked against
PyTorch (optionally INT8, with its mAP change measured), with BoxMOT's sidecar and agreement."""

from __future__ import annotations

import os
import sys
from typing import List, Optional

from ..deploy.export import (
    check_images_for,
    export_onnx,
    export_weights,
    graph_input_norm,
    onnx_parity,
)
from ..deploy.openvino import check_xml_path, export_openvino
from ..deploy.quantize import (
    calibration_images,
    feature_agreement,
    held_out_map,
    held_out_split,
    quantize_int8,
)
from ..deploy.trackers import BoxmotError, boxmot_agreement, write_sidecar
from ..errors import InvalidValueError, MissingExtraError
from ..inference import load_model

FORMATS = ("weights", "onnx", "openvino")
RUNTIME_NAME = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}


def _write(model, fmt: str, path: str, flip: bool) -> str:
    """The float32 export of ``model`` in ``fmt`` at ``path``."""
    if fmt == "openvino":
        return export_openvino(model, path, flip=flip)
    return export_onnx(model, path, flip=flip)


def _files(path: str) -> List[str]:
    return [path, path[:-4] + ".bin"] if path.lower().endswith(".xml") else [path]


def _size_mb(path: str) -> float:
    return sum(os.path.getsize(f) for f in _files(path) if os.path.exists(f)) / 1e6


def _describe(model, fmt: str, path: str, label: str, flip: bool, origin: str, r) -> str:
    info = model.info
    renorm = (
        ", ImageNet-normalised input renormalised to the model's mean/std in the graph"
        if graph_input_norm(info)
        else ""
    )
    return (
        f"{label} ({_size_mb(path):.1f} MB, {info.name}, {info.feature_dim}-d, input "
        f"{info.height}x{info.width}, flip-averaging "
        f"{'in the graph' if flip else 'left to the runtime'}{renorm}); {RUNTIME_NAME[fmt]} vs "
        f"PyTorch on {origin}: largest difference {r['max_diff_normalised']:.2e} on "
        f"L2-normalised features ({r['max_diff_raw']:.2e} raw)"
    )


def _int8(model, fp32: str, out: str, calib, max_map_drop: float, images) -> int:
    """Quantise ``fp32`` into ``out``, print the held-out mAP change; 2 past the bound."""
    paths, origin = calib
    quantize_int8(fp32, out, paths, origin)
    print(f"wrote {out} ({_size_mb(out):.1f} MB): INT8, post-training static, NNCF, {origin}")
    split = held_out_split(model.info)
    if split is None:
        mean, low = feature_agreement(fp32, out, images)
        print(
            "warning: INT8 mAP change not measured: the checkpoint's data set has no query/"
            f"gallery split here; INT8 vs float32 features on the check images: mean cosine "
            f"{mean:.4f}, min {low:.4f}"
        )
        return 0
    query, gallery, note = split
    before = held_out_map(fp32, model.info, query, gallery)
    after = held_out_map(out, model.info, query, gallery)
    drop = 100 * (before["mAP"] - after["mAP"])
    print(
        f"held-out mAP {100 * before['mAP']:.2f}% (float32) -> {100 * after['mAP']:.2f}% "
        f"(INT8): {-drop:+.2f} points; rank-1 {100 * before['rank1']:.2f}% -> "
        f"{100 * after['rank1']:.2f}% ({note})"
    )
    if drop > max_map_drop:
        for f in _files(out):
            os.remove(f)
        print(
            f"partreid export: error: INT8 loses {drop:.2f} mAP points, more than "
            f"--max-map-drop {max_map_drop:g}; {out} removed (use the float32 export)",
            file=sys.stderr,
        )
        return 2
    return 0


def _boxmot_report(out: str, info, images) -> None:
    """Write BoxMOT's sidecar and print how BoxMOT's features agree with partreid's."""
    sidecar = write_sidecar(out, info)
    try:
        r = boxmot_agreement(out, images)
    except MissingExtraError:
        print(f"wrote {sidecar}; BoxMOT not installed: agreement not measured")
        return
    except BoxmotError as exc:
        print(f"warning: {exc}")
        return
    asked = ""
    if r["refused_installs"]:
        asked = (
            f" (BoxMOT asked to pip install {', '.join(r['refused_installs'])} to load it; "
            "refused: it ran with the installed runtime)"
        )
    print(
        f"BoxMOT {r['boxmot_version']} runs {out} with crops {r['input_size'][0]}x"
        f"{r['input_size'][1]} ({sidecar}): its features vs partreid's on {len(images)} check "
        f"images: mean cosine {r['mean_cos']:.4f}, min {r['min_cos']:.4f}; with crops resized "
        f"by OpenCV as BoxMOT does: min {r['min_cos_same_resize']:.6f} (the rest is OpenCV's "
        f"resize, not antialiased, against PIL's){asked}"
    )
    if r["min_cos_same_resize"] < 0.999:
        print("warning: BoxMOT's features differ from partreid's by more than the resize")


def export_command(
    checkpoint: str,
    fmt: str,
    out: str,
    check_images: Optional[str] = None,
    flip: bool = True,
    tolerance: float = 1e-4,
    int8: bool = False,
    calibration: Optional[str] = None,
    max_map_drop: float = 1.0,
) -> int:
    """``partreid export``; returns the exit code (2 when the parity check fails or INT8 loses
    more than ``max_map_drop`` mAP points)."""
    if fmt not in FORMATS:
        raise InvalidValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "weights":
        if int8:
            raise InvalidValueError("--int8 needs --format onnx or openvino")
        r = export_weights(checkpoint, out)
        print(
            f"wrote {out}: {r['bytes_out'] / 1e6:.2f} MB, inference only (no optimizer/train "
            f"state); {checkpoint}: {r['bytes_in'] / 1e6:.2f} MB = {r['ratio']:.2f}x"
        )
        return 0
    if fmt == "openvino":
        check_xml_path(out)
    model = load_model(checkpoint, "cpu")
    # fail early on a bad --check-images or missing calibration data
    images, origin = check_images_for(model.info, check_images)
    calib = calibration_images(model.info, calibration) if int8 else None
    stem, ext = os.path.splitext(out)
    fp32 = f"{stem}.fp32tmp{os.getpid()}{ext}" if int8 else out
    try:
        _write(model, fmt, fp32, flip)
        r = onnx_parity(fp32, model, images)
        label = f"exported the float32 graph for {out}" if int8 else f"wrote {out}"
        print(_describe(model, fmt, fp32, label, flip, origin, r))
        if not r["max_diff_normalised"] <= tolerance:
            print(
                f"partreid export: error: {'ONNX' if fmt == 'onnx' else 'OpenVINO'} parity check "
                f"FAILED: {r['max_diff_normalised']:.2e} > tolerance {tolerance:g}; do not use "
                f"{out}",
                file=sys.stderr,
            )
            return 2
        if int8 and _int8(model, fp32, out, calib, max_map_drop, images):
            return 2
    finally:
        if int8:
            for f in _files(fp32):
                if os.path.exists(f):
                    os.remove(f)
    _boxmot_report(out, model.info, images)
    return 0
