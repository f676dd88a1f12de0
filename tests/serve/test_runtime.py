"""The server's model runtime: ONNX Runtime on a cached, checked export by default on the CPU,
PyTorch on request or as the fallback; both rank the gallery alike."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from partreid.deploy.runtime import onnx_available

needs_onnx = pytest.mark.skipif(
    not onnx_available(), reason="the deploy extra (onnx, onnxruntime, onnxscript) is missing"
)


def _worker(serve_setup, **kw):
    from partreid.serve import build_worker

    return build_worker(
        serve_setup["checkpoint"],
        serve_setup["gallery"],
        cache_dir=os.path.join(serve_setup["root"], "cache"),
        device="cpu",
        batch_size=32,
        num_workers=0,
        **kw,
    )


def _queries(serve_setup, n=6):
    folder = serve_setup["query"]
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:n]]


@needs_onnx
def test_default_runtime_on_cpu_is_onnx_runtime_and_describes_the_checkpoint(client, serve_setup):
    from partreid.deploy.export import onnx_cache_path

    worker = serve_setup["worker"]
    assert worker.runtime == "onnxruntime"
    model = client.get("/api/health").json()["model"]
    assert model["runtime"] == "onnxruntime"
    assert model["checkpoint"] == os.path.abspath(serve_setup["checkpoint"])
    assert model["heatmap"] is True  # heat maps come from the PyTorch module
    cached = onnx_cache_path(serve_setup["checkpoint"], os.path.join(serve_setup["root"], "cache"))
    assert worker.extractor.source_path == os.path.abspath(cached)


@needs_onnx
def test_onnx_and_torch_runtimes_give_the_same_features_and_ranking(serve_setup):
    onnx_worker = serve_setup["worker"]
    torch_worker = _worker(serve_setup, runtime="torch")
    try:
        assert torch_worker.runtime == "torch"
        files = _queries(serve_setup)
        a = onnx_worker.extractor(files)
        b = torch_worker.extractor(files)
        na = a / np.linalg.norm(a, axis=1, keepdims=True)
        nb = b / np.linalg.norm(b, axis=1, keepdims=True)
        assert np.abs(na - nb).max() < 1e-4
        tensors = [onnx_worker.preprocess(Image.open(f).convert("RGB")) for f in files]
        for t in tensors:
            d1, i1 = onnx_worker.submit_image(t, topk=5, rerank=False).result(timeout=60)
            d2, i2 = torch_worker.submit_image(t, topk=5, rerank=False).result(timeout=60)
            assert i1.tolist() == i2.tolist()
            # squared: sqrt magnifies the last bits near 0 (neighbours are ~1-2 apart)
            np.testing.assert_allclose(d1**2, d2**2, rtol=1e-4, atol=1e-4)
    finally:
        torch_worker.close()


@needs_onnx
def test_onnx_export_is_reused_until_the_checkpoint_changes(serve_setup, caplog, tmp_path):
    import shutil

    from partreid.deploy.export import onnx_cache_path

    cache = os.path.join(serve_setup["root"], "cache")
    path = onnx_cache_path(serve_setup["checkpoint"], cache)
    mtime = os.stat(path).st_mtime_ns
    with caplog.at_level(logging.INFO, logger="partreid"):
        again = _worker(serve_setup)
    again.close()
    assert again.runtime == "onnxruntime"
    assert os.stat(path).st_mtime_ns == mtime  # not exported again
    assert "(cached)" in caplog.text and "exporting" not in caplog.text
    # another checkpoint file (same weights, other path/mtime) gets its own entry
    other = str(tmp_path / "copy.pth")
    shutil.copy(serve_setup["checkpoint"], other)
    assert onnx_cache_path(other, cache) != path


def test_runtime_fallback_and_option_errors(serve_setup, monkeypatch, caplog):
    from partreid.deploy import export
    from partreid.serve import build_worker

    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        build_worker(serve_setup["checkpoint"], serve_setup["gallery"], runtime="tensorrt")
    with pytest.raises(ValueError, match="--runtime torch needs a partreid checkpoint"):
        build_worker("model.onnx", serve_setup["gallery"], runtime="torch")

    def broken(*args, **kwargs):
        raise export.OnnxParityError("features differ by 3.0e-01")

    monkeypatch.setattr(export, "cached_onnx", broken)
    monkeypatch.setattr("partreid.deploy.runtime.onnx_available", lambda: True)
    with caplog.at_level(logging.WARNING, logger="partreid"):
        worker = _worker(serve_setup)  # auto: falls back to PyTorch and says why
    worker.close()
    assert worker.runtime == "torch"
    assert "ONNX export failed (features differ by 3.0e-01); serving with PyTorch" in caplog.text
    with pytest.raises(export.OnnxParityError):
        _worker(serve_setup, runtime="onnx")  # asked for explicitly: no silent fallback
