"""load_model round trips and the Extractor's inputs (paths, PIL, arrays, tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from partreid.checkpoint import CheckpointError, model_meta, save_checkpoint
from partreid.config import load_config
from partreid.inference import Extractor, load_model
from partreid.models import build_model

MODELS = ["bot", "mgn", "pcb", "cgpn", "rmgl"]


SIZES = {"pcb": (128, 64)}  # PCB cuts 6 stripes: needs a taller map than 64 x 32 gives


def make_checkpoint(path, name="bot", height=64, width=32, seed=0, train_state=None):
    """A resnet18 ``name`` with random weights saved as a partreid checkpoint."""
    cfg = load_config(
        None,
        [
            f"model.name={name}",
            "model.backbone=resnet18",
            "model.pretrained=false",
            f"input.height={height}",
            f"input.width={width}",
        ],
    )
    torch.manual_seed(seed)
    model = build_model(name, 7, **{k: v for k, v in cfg.model.items() if k != "name"}).eval()
    for m in model.modules():  # non-trivial BN statistics, so a lost buffer shows
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    save_checkpoint(str(path), model.state_dict(), model_meta(cfg, model, 7), train_state)
    return model


@pytest.mark.parametrize("name", MODELS)
def test_load_model_round_trip(tmp_path, name):
    h, w = SIZES.get(name, (64, 32))
    model = make_checkpoint(tmp_path / "m.pth", name, h, w)
    x = torch.randn(3, 3, h, w)
    with torch.no_grad():
        want = model(x)
        loaded = load_model(str(tmp_path / "m.pth"))
        got = loaded(x)
    assert loaded.info.name == name and loaded.info.input_size == (h, w)
    assert got.shape == (3, model.feature_dim) == (3, loaded.info.feature_dim)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (80 + 4 * i, 40, 3), dtype=np.uint8) for i in range(n)]


def test_extractor_inputs_agree_and_match_eval(tmp_path):
    from partreid.data.loader import build_test_loader
    from partreid.engine.evaluator import extract_features

    make_checkpoint(tmp_path / "m.pth", "bot")
    arrays = _images(3)
    paths = []
    for i, a in enumerate(arrays):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(a).save(paths[-1])
    ext = Extractor(str(tmp_path / "m.pth"), device="cpu", batch_size=2, progress=False)
    assert ext.feature_dim == 512 and ext.info.name == "bot"
    from_paths = ext(paths)
    from_pil = ext([Image.fromarray(a) for a in arrays])
    from_arrays = ext(arrays)
    tensors = [ext.transform(Image.fromarray(a)) for a in arrays]
    from_tensors = ext(tensors)
    from_batch = ext(torch.stack(tensors))
    assert from_paths.shape == (3, 512) and from_paths.dtype == np.float32
    for other in (from_pil, from_arrays, from_tensors, from_batch):
        np.testing.assert_array_equal(other, from_paths)
    # the numbers `partreid eval` computes (flip-averaged, its own loader and batches)
    loader = build_test_loader([(p, 0, 0) for p in paths], ext.transform, 3, num_workers=0)
    ref, _, _ = extract_features(ext.model, loader, torch.device("cpu"), flip=True)
    np.testing.assert_allclose(from_paths, ref.numpy(), rtol=1e-5, atol=1e-5)
    # flip=False is the bare model
    plain = Extractor(ext.model, flip=False, progress=False)(arrays[:2])
    with torch.no_grad():
        np.testing.assert_allclose(plain, ext.model(torch.stack(tensors[:2])).numpy(), atol=1e-6)
    assert np.abs(plain - from_paths[:2]).max() > 1e-4  # flipping does change the feature


def test_extractor_clear_errors(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="not a partreid checkpoint"):
        Extractor(str(tmp_path / "foreign.pth"), device="cpu")
    make_checkpoint(tmp_path / "m.pth", "bot")
    ext = Extractor(str(tmp_path / "m.pth"), device="cpu", progress=False)
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        ext([np.zeros((10, 10), np.float32)])
    with pytest.raises(ValueError, match=r"preprocessed to \(3, 64, 32\)"):
        ext([torch.zeros(3, 10, 10)])
    with pytest.raises(Exception, match="image not found"):
        ext([str(tmp_path / "missing.jpg")])
    with pytest.raises(ValueError, match="load_model"):
        Extractor(torch.nn.Linear(2, 2))
