"""``partreid export --int8``: NNCF post-training quantisation calibrated on training crops, the
held-out mAP change printed against an independent evaluation, a refusal past the bound, and one
clear line when there is nothing to calibrate on."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from partreid.commands import export as C
from partreid.deploy import quantize as Q
from partreid.errors import InvalidValueError
from partreid.inference import Extractor, load_model
from partreid.metrics.rank import evaluate_rank

from .conftest import run_cli

pytest.importorskip("nncf")
pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")


def _copy_ir(src, dst):
    shutil.copy(src, dst)
    shutil.copy(src[:-4] + ".bin", dst[:-4] + ".bin")
    return dst


@pytest.fixture
def int8_run(exports, own_norm_ckpt, tmp_path, monkeypatch):
    """``partreid export --format openvino --int8`` with the float32 IR taken from the
    session's export (no second export): ``(out, code, printed)``."""
    fp32 = exports("openvino")[0]
    monkeypatch.setattr(C, "_write", lambda model, fmt, path, flip: _copy_ir(fp32, path))

    def run(*extra):
        out = str(tmp_path / "q.xml")
        code, printed = run_cli(
            ["export", own_norm_ckpt, "--format", "openvino", "--int8", "--out", out, *extra]
        )
        return out, code, printed

    return run


def _cosine_map(model, query, gallery):
    """mAP with cosine distance, computed here from the features (the reference)."""
    ext = Extractor(model, device="cpu", num_workers=0, progress=False)
    qf, gf = ext([p for p, _, _ in query]), ext([p for p, _, _ in gallery])
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    gf /= np.linalg.norm(gf, axis=1, keepdims=True)
    r = evaluate_rank(
        torch.from_numpy(1 - qf @ gf.T),
        np.array([q[1] for q in query]),
        np.array([g[1] for g in gallery]),
        np.array([q[2] for q in query]),
        np.array([g[2] for g in gallery]),
    )
    return 100 * float(r["mAP"])


def test_int8_export_prints_the_held_out_map_change(int8_run, exports, own_norm_ckpt):
    out, code, printed = int8_run()
    assert code == 0, printed
    info = load_model(own_norm_ckpt).info
    split = Q.held_out_split(info)
    assert split is not None
    query, gallery, _ = split
    before = _cosine_map(exports("openvino")[0], query, gallery)
    after = _cosine_map(out, query, gallery)
    assert f"held-out mAP {before:.2f}% (float32) -> {after:.2f}% (INT8)" in printed, printed
    assert "INT8, post-training static, NNCF, 48 training images of market1501" in printed
    q = Extractor(out, num_workers=0, progress=False)
    assert q.exported.precision == "int8"
    assert q.exported.quantization["images"] == 48
    # a quarter of the float32 weights, and features close to float32's
    assert os.path.getsize(out[:-4] + ".bin") < 0.35 * os.path.getsize(
        exports("openvino")[0][:-4] + ".bin"
    )
    imgs = [p for p, _, _ in query[:16]]
    mean, low = Q.feature_agreement(exports("openvino")[0], out, imgs)
    assert mean > 0.99 and low > 0.97


def test_int8_is_refused_past_the_bound(int8_run, monkeypatch, capsys):
    maps = iter([{"mAP": 0.60, "rank1": 0.7}, {"mAP": 0.57, "rank1": 0.7}])
    monkeypatch.setattr(C, "held_out_map", lambda *a: next(maps))
    monkeypatch.setattr(C, "quantize_int8", lambda fp32, out, *a: _copy_ir(fp32, out))
    out, code, printed = int8_run("--max-map-drop", "2.5")
    assert code == 2
    assert "held-out mAP 60.00% (float32) -> 57.00% (INT8): -3.00 points" in printed
    err = capsys.readouterr().err
    assert "INT8 loses 3.00 mAP points, more than --max-map-drop 2.5" in err
    assert not os.path.exists(out) and not os.path.exists(out[:-4] + ".bin")


def test_missing_calibration_data_is_one_clear_line(own_norm_ckpt, tmp_path):
    info = load_model(own_norm_ckpt).info
    gone = json.loads(json.dumps(info.config))
    gone["data"]["root"] = str(tmp_path / "not_here")
    info.config = gone
    with pytest.raises(InvalidValueError) as err:
        Q.calibration_images(info)
    msg = str(err.value)
    assert "not_here is not here; give --calibration DIR" in msg and "\n" not in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidValueError, match="--calibration .*empty: no images found"):
        Q.calibration_images(info, str(tmp_path / "empty"))
    assert Q.held_out_split(info) is None


def test_int8_onnx_runs_in_onnx_runtime(exports, own_norm_ckpt, tmp_path):
    fp32 = exports("onnx")[0]
    info = load_model(own_norm_ckpt).info
    paths, origin = Q.calibration_images(info, count=16)
    out = Q.quantize_int8(fp32, str(tmp_path / "q.onnx"), paths, origin)
    ext = Extractor(out, num_workers=0, progress=False)
    assert ext.backend == "onnxruntime" and ext.exported.precision == "int8"
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    mean, _ = Q.feature_agreement(fp32, out, paths)
    assert mean > 0.99
