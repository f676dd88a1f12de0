"""``partreid export --format openvino``: an IR that reproduces PyTorch's features and that the
Extractor, the AppearanceEmbedder, ingest and serve take like an ONNX file; graphs that take
ImageNet-normalised input whatever the model's normalisation; one clear line for a file that
cannot be used."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from partreid.cli import main
from partreid.data.transforms import build_test_transform
from partreid.deploy.runtime import build_extractor
from partreid.errors import InvalidValueError
from partreid.inference import AppearanceEmbedder, Extractor, OnnxModel, OpenVinoModel, load_model
from partreid.store import open_store

from .conftest import OWN_MEAN, OWN_STD

ov = pytest.importorskip("openvino")


def _images(n, h=64, w=32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h + 7 * i, w + 3 * i, 3), dtype=np.uint8) for i in range(n)]


def _unit(f):
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def test_openvino_export_reproduces_pytorch(exports, own_norm_ckpt):
    out, code, printed = exports("openvino")
    assert code == 0, printed
    assert "OpenVINO vs PyTorch on 16 images of the checkpoint's data set" in printed
    assert os.path.isfile(out[:-4] + ".bin") and os.path.isfile(out + ".metadata.json")
    module = load_model(own_norm_ckpt)
    # float32 weights (OpenVINO's save_model would halve them to float16 by default)
    params = sum(p.numel() for p in module.parameters())
    assert os.path.getsize(out[:-4] + ".bin") > 3.5 * params
    ref = Extractor(module, device="cpu", num_workers=0, progress=False)
    ext = Extractor(out, num_workers=0, progress=False)
    assert ext.backend == "openvino" and ext.exported.precision == "fp32"
    assert ext.info.fingerprint() == module.info.fingerprint()  # a store takes either
    imgs = _images(7)
    for batch in (1, 7):
        ext.batch_size = batch
        np.testing.assert_allclose(_unit(ext(imgs)), _unit(ref(imgs)), atol=2e-5)


def test_embedder_ingest_and_serve_take_the_ir(exports, own_norm_ckpt, tiny_synthetic, tmp_path):
    out = exports("openvino")[0]
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    boxes = np.array([[10, 5, 40, 90], [70, 20, 110, 118], [150, 0, 170, 50]], np.float32)
    got = AppearanceEmbedder(out, device="cpu")(frame, boxes)
    want = AppearanceEmbedder(own_norm_ckpt, device="cpu")(frame, boxes)
    np.testing.assert_allclose(got, want, atol=2e-5)
    crops = os.path.join(tiny_synthetic, "query")
    store = str(tmp_path / "site")
    common = ["--store", store, "--device", "cpu", "--num-workers", "0", "--no-progress"]
    common += ["--start-time", "2026-12-07T10:00:00Z"]
    assert main(["ingest", out, crops, *common]) == 0
    assert main(["ingest", own_norm_ckpt, crops, *common]) == 0  # same model: store takes both
    with open_store(store) as st:
        assert st.stats().crops == len(os.listdir(crops))
    extractor, module = build_extractor(out, str(tmp_path / "cache"), runtime="auto")
    assert extractor.backend == "openvino" and module is None
    from partreid.serve import build_worker

    worker = build_worker(out, None, cache_dir=str(tmp_path / "cache"), device="cpu")
    assert worker.runtime == "openvino"  # the page and /api/health name the IR's runtime
    with pytest.raises(InvalidValueError, match="--runtime torch needs a partreid checkpoint"):
        build_extractor(out, str(tmp_path / "cache"), runtime="torch")


def test_unusable_files_fail_in_one_line(exports, tmp_path):
    out = exports("openvino")[0]
    core = ov.Core()
    dynamic = core.read_model(out)
    dynamic.reshape({0: ov.PartialShape([-1, 3, -1, -1])})
    ov.save_model(dynamic, str(tmp_path / "dyn.xml"), compress_to_fp16=False)
    param = ov.opset13.parameter([1, 3, 64, 32], ov.Type.f32)
    ov.save_model(ov.Model([ov.opset13.relu(param)], [param]), str(tmp_path / "foreign.xml"))
    (tmp_path / "broken.xml").write_text("<net name='x' version='11'><layers>")
    cases = {
        "dyn.xml": "the input size is not fixed to the model's: the graph's input is "
        "['?', 3, '?', '?'], expected [batch, 3, 64, 32]",
        "foreign.xml": "is not a partreid OpenVINO export (no 'partreid' metadata)",
        "broken.xml": f"cannot load OpenVINO model {tmp_path / 'broken.xml'} with openvino",
        "absent.xml": "OpenVINO model not found",
    }
    for name, message in cases.items():
        with pytest.raises(Exception) as err:
            OpenVinoModel(str(tmp_path / name))
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert main(["export", "x.pth", "--format", "openvino", "--out", "m.onnx"]) == 2


def test_graph_takes_imagenet_input_whatever_the_model_was_trained_with(exports, own_norm_ckpt):
    path, code, printed = exports("onnx")
    assert code == 0 and "ImageNet-normalised input renormalised to the model's" in printed
    onnx_model = OnnxModel(path)
    meta = json.loads(onnx_model.session.get_modelmeta().custom_metadata_map["partreid"])
    assert meta["format"] == "partreid-onnx/2"
    assert meta["input"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert onnx_model.info.mean == OWN_MEAN  # the model's description is unchanged
    module = load_model(own_norm_ckpt)
    pics = [Image.fromarray(im) for im in _images(4, seed=5)]
    imagenet = build_test_transform(64, 32)  # what BoxMOT feeds
    own = build_test_transform(64, 32, OWN_MEAN, OWN_STD)
    x_in = torch.stack([imagenet(p) for p in pics]).numpy()
    x_own = torch.stack([own(p) for p in pics])
    with torch.no_grad():
        want = 0.5 * (module(x_own) + module(torch.flip(x_own, dims=[3])))
        x = torch.from_numpy(x_in)
        raw = 0.5 * (module(x) + module(torch.flip(x, dims=[3])))
    for model in (onnx_model, OpenVinoModel(exports("openvino")[0])):
        got = model._run(torch.from_numpy(x_in)).numpy()
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    # fed without renormalising, the model gives other features: the layer matters
    assert np.abs(_unit(raw.numpy()) - _unit(want.numpy())).max() > 1e-2
