"""``partreid export``: inference-only weights, or an ONNX model checked against PyTorch."""

from __future__ import annotations

import os
import sys
from typing import Optional

from ..deploy.export import check_images_for, export_onnx, export_weights, onnx_parity
from ..errors import InvalidValueError
from ..inference import load_model


def export_command(
    checkpoint: str,
    fmt: str,
    out: str,
    check_images: Optional[str] = None,
    flip: bool = True,
    tolerance: float = 1e-4,
) -> int:
    """``partreid export``; returns the exit code (2 when the ONNX parity check fails)."""
    if fmt == "weights":
        r = export_weights(checkpoint, out)
        print(
            f"wrote {out}: {r['bytes_out'] / 1e6:.2f} MB, inference only (no optimizer/train "
            f"state); {checkpoint}: {r['bytes_in'] / 1e6:.2f} MB = {r['ratio']:.2f}x"
        )
        return 0
    if fmt != "onnx":
        raise InvalidValueError(f"unknown export format {fmt!r}; valid: weights, onnx")
    model = load_model(checkpoint, "cpu")
    images, origin = check_images_for(
        model.info, check_images
    )  # fail early on a bad --check-images
    export_onnx(model, out, flip=flip)
    r = onnx_parity(out, model, images)
    size = os.path.getsize(out) / 1e6
    print(
        f"wrote {out} ({size:.1f} MB, {model.info.name}, {model.info.feature_dim}-d, "
        f"input {model.info.height}x{model.info.width}, flip-averaging "
        f"{'in the graph' if flip else 'left to the runtime'}); ONNX Runtime vs PyTorch on "
        f"{origin}: largest difference {r['max_diff_normalised']:.2e} on L2-normalised "
        f"features ({r['max_diff_raw']:.2e} raw)"
    )
    if not r["max_diff_normalised"] <= tolerance:
        print(
            f"partreid export: error: ONNX parity check FAILED: {r['max_diff_normalised']:.2e} > "
            f"tolerance {tolerance:g}; do not use {out}",
            file=sys.stderr,
        )
        return 2
    return 0
