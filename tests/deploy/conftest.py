"""Exports shared by the OpenVINO, INT8 and BoxMOT tests (each export costs seconds): a model
trained with its own normalisation (not ImageNet's), on the tiny data set's folder."""

from __future__ import annotations

import contextlib
import io
import shutil

import pytest
import torch

from partreid.checkpoint import model_meta, save_checkpoint
from partreid.cli import main
from partreid.config import load_config
from partreid.deploy import openvino as deploy_openvino
from partreid.models import build_model

OWN_MEAN, OWN_STD = [0.5, 0.5, 0.5], [0.25, 0.5, 0.5]


@pytest.fixture(scope="session")
def own_norm_ckpt(tiny_synthetic, tmp_path_factory):
    """A BoT-R18 (64 x 32, random weights with non-trivial BN statistics) normalised with
    ``OWN_MEAN``/``OWN_STD``; its data set is the tiny synthetic folder (Market layout)."""
    cfg = load_config(
        None,
        [
            "model.name=bot",
            "model.backbone=resnet18",
            "model.pretrained=false",
            "input.height=64",
            "input.width=32",
            f"input.mean={OWN_MEAN}",
            f"input.std={OWN_STD}",
            "data.name=market1501",
            f"data.root={tiny_synthetic}",
            "eval.distance=cosine",
        ],
    )
    torch.manual_seed(3)
    model = build_model("bot", 8, backbone="resnet18", pretrained=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    path = str(tmp_path_factory.mktemp("own_norm") / "own.pth")
    save_checkpoint(path, model.state_dict(), model_meta(cfg, model, 8))
    return path


def run_cli(args):
    """``partreid ARGS``: (exit code, what it printed on stdout)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(list(args))
    return code, buf.getvalue()


@pytest.fixture(scope="session")
def exports(own_norm_ckpt, tmp_path_factory):
    """``exports(fmt)``: ``(path, exit code, printed)`` of ``partreid export --format FMT`` of
    ``own_norm_ckpt``, made the first time a test asks. The OpenVINO export converts the ONNX
    export's graph (torch.export, the slow step, runs once)."""
    folder = tmp_path_factory.mktemp("exports")
    made = {}

    def get(fmt):
        if fmt not in made:
            pytest.importorskip("onnx")
            pytest.importorskip("onnxruntime")
            pytest.importorskip("onnxscript")
            if fmt == "openvino":
                pytest.importorskip("openvino")
            out = str(folder / ("m.xml" if fmt == "openvino" else "m.onnx"))
            args = ["export", own_norm_ckpt, "--format", fmt, "--out", out]
            with pytest.MonkeyPatch.context() as mp:
                if fmt == "openvino":
                    onnx_file = get("onnx")[0]
                    mp.setattr(
                        deploy_openvino,
                        "export_onnx",
                        lambda model, path, flip=True: shutil.copy(onnx_file, path),
                    )
                made[fmt] = (out, *run_cli(args))
        return made[fmt]

    return get
