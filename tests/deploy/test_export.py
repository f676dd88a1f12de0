"""partreid export: inference-only weights and ONNX models that reproduce PyTorch's features."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from partreid.checkpoint import load_checkpoint, model_meta, save_checkpoint
from partreid.cli import main
from partreid.commands import export as C
from partreid.config import load_config
from partreid.deploy import export as E
from partreid.inference import Extractor, load_model
from partreid.models import build_model
from partreid.models.abp import ActivationBalancedPooling
from partreid.models.parts import stripe_pool

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZES = {"pcb": (128, 64)}  # PCB's 6 stripes need a taller map than 64 x 32 gives


def make_checkpoint(path, name="bot", train_state=None, overrides=()):
    h, w = SIZES.get(name, (64, 32))
    cfg = load_config(
        None,
        [
            f"model.name={name}",
            "model.backbone=resnet18",
            "model.pretrained=false",
            f"input.height={h}",
            f"input.width={w}",
            *overrides,
        ],
    )
    torch.manual_seed(0)
    model = build_model(name, 6, **{k: v for k, v in cfg.model.items() if k != "name"})
    with torch.no_grad():  # non-trivial BN statistics so that the eval path matters
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    state = None
    if train_state:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for p in model.parameters():
            p.grad = torch.full_like(p, 1e-3)
        opt.step()  # Adam's two moment buffers per weight, as in a training run
        state = {"optimizer": opt.state_dict(), "epoch": 1, "step": 1}
    save_checkpoint(str(path), model.state_dict(), model_meta(cfg, model, 6), state)
    return str(path)


def _norm(f):
    return f / np.linalg.norm(f, axis=1, keepdims=True)


# ------------------------------------------------------------------ weights


def test_weights_export_drops_training_state(tmp_path):
    ckpt = make_checkpoint(tmp_path / "last.pth", "bot", train_state=True)
    out = str(tmp_path / "weights.pth")
    assert main(["export", ckpt, "--format", "weights", "--out", out]) == 0
    small, big = load_checkpoint(out), load_checkpoint(ckpt)
    assert "train_state" not in small and "train_state" in big
    assert small["meta"] == big["meta"]
    assert os.path.getsize(ckpt) > 2.5 * os.path.getsize(out)  # Adam keeps 2 moments per weight
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_model(out)(x), load_model(ckpt)(x), rtol=0, atol=0)


# ------------------------------------------------------------------ ONNX building blocks


def test_cummax_decomposition_matches_torch():
    g = torch.Generator().manual_seed(0)
    ints = torch.randint(-3, 4, (5, 6), generator=g)  # many ties
    floats = torch.randn(4, 7, 3, generator=g)
    for x, dim in ((ints, 1), (floats, 1), (floats, 0), (floats, -1)):
        v, i = E.cummax_decomposition(x, dim)
        ref = torch.cummax(x, dim)
        torch.testing.assert_close(v, ref.values, rtol=0, atol=0)
        torch.testing.assert_close(i, ref.indices, rtol=0, atol=0)


class _ABPNet(torch.nn.Module):
    def __init__(self, abp=True):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.abp = ActivationBalancedPooling(3) if abp else None

    def forward(self, x):
        y = torch.relu(self.conv(x))
        pooled = self.abp(y) if self.abp is not None else stripe_pool(y, 3, "avg")
        return pooled.flatten(1)


def test_abp_exports_to_onnx_and_changes_the_output(tmp_path):
    net = _ABPNet().eval()
    path = E.export_graph(net, torch.randn(2, 3, 12, 6), str(tmp_path / "abp.onnx"))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.randn(batch, 3, 12, 6, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = net(x).numpy()
            uniform = _ABPNet(abp=False).eval()(x).numpy()
        got = sess.run(None, {"images": x.numpy()})[0]
        assert got.shape == (batch, 48)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert np.abs(want - uniform).max() > 1e-2  # ABP's borders are not the uniform ones


# ------------------------------------------------------------------ command behaviour


def test_export_fails_with_exit_2_above_tolerance(tmp_path, monkeypatch, capsys):
    ckpt = make_checkpoint(tmp_path / "m.pth", "bot")
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    Image.new("RGB", (30, 60), (200, 10, 10)).save(tmp_path / "imgs" / "a.png")
    monkeypatch.setattr(C, "export_onnx", lambda model, out, flip=True: open(out, "wb").close())
    monkeypatch.setattr(
        C, "onnx_parity", lambda *a: {"max_diff_normalised": 3e-3, "max_diff_raw": 0.1}
    )
    out = str(tmp_path / "m.onnx")
    args = ["export", ckpt, "--format", "onnx", "--out", out]
    assert main([*args, "--check-images", str(tmp_path / "imgs")]) == 2
    err = capsys.readouterr().err
    assert "ONNX parity check FAILED: 3.00e-03 > tolerance 0.0001" in err
    (tmp_path / "none").mkdir()
    assert main([*args, "--check-images", str(tmp_path / "none")]) == 2
    assert "--check-images" in capsys.readouterr().err


def test_foreign_onnx_file_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match="not a partreid ONNX export"):
        Extractor(str(tmp_path / "other.onnx"))


# ------------------------------------------------------------------ every model (slow: export)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bot", "mgn", "pcb", "cgpn", "rmgl"])
def test_onnx_parity_every_model(tmp_path, name):
    ckpt = make_checkpoint(tmp_path / "m.pth", name)
    model = load_model(ckpt)
    h, w = model.info.input_size
    out = E.export_onnx(model, str(tmp_path / "m.onnx"))
    torch_ext = Extractor(model, device="cpu", batch_size=7, progress=False)
    onnx_ext = Extractor(out, batch_size=7, progress=False)
    assert onnx_ext.info.input_size == (h, w) and onnx_ext.feature_dim == model.feature_dim
    assert onnx_ext.info.mean == model.info.mean and onnx_ext.onnx.flip_in_graph
    sess = onnx_ext.onnx.session
    for batch in (1, 7):
        x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(batch))
        want = torch_ext(x)
        got = sess.run(None, {"images": x.numpy()})[0]
        assert got.shape == (batch, model.feature_dim)
        assert np.abs(_norm(got) - _norm(want)).max() <= 1e-4
        np.testing.assert_allclose(onnx_ext(x), got, rtol=0, atol=0)
    if name == "rmgl":  # the exported graph keeps test-time ABP (and the RP path)
        no_abp = Extractor(load_model(ckpt, overrides={"abp": False}), progress=False)(x)
        assert np.abs(_norm(no_abp) - _norm(want)).max() > 1e-3
        assert np.abs(_norm(got) - _norm(no_abp)).max() > 1e-3


def test_parity_images_fall_back_to_synthetic_with_a_note(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "m.pth", "bot", overrides=[f"data.root={tmp_path}/gone"])
    info = load_model(ckpt).info
    images, origin = E.check_images_for(info, None)
    assert origin == "16 synthetic images" and len(images) == 16
    assert images[0].shape == (64, 32, 3) and images[0].dtype == np.uint8
    assert "data set folder is not here" in capsys.readouterr().out
    (tmp_path / "d" / "s").mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (20, 40), (i, 0, 0)).save(tmp_path / "d" / "s" / f"{i}.jpg")
    images, origin = E.check_images_for(info, str(tmp_path / "d"))
    assert len(images) == 3 and origin.startswith("3 images from")
