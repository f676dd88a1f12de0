"""engine.fastpath: the train: speed switches resolved into precision / model / input settings."""

from __future__ import annotations

import pytest
import torch

from partreid.config import load_config
from partreid.engine.speed import input_pipeline, precision, prepare_model


def test_precision_from_config():
    cfg = load_config(overrides=["train.amp=true", "train.amp_dtype=float16"])
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    p = precision(cfg.train, cuda)
    assert p.enabled and p.dtype == torch.float16 and p.use_scaler
    p = precision(load_config(overrides=["train.amp=true"]).train, cuda)
    assert p.enabled and p.dtype == torch.bfloat16 and not p.use_scaler
    assert not precision(cfg.train, cpu).enabled  # autocast is CUDA only
    with pytest.raises(ValueError, match="amp_dtype"):
        precision(load_config(overrides=["train.amp_dtype=int8"]).train, cuda)


def test_prepare_model_and_input_pipeline(tiny_synthetic):
    cfg = load_config(overrides=["train.channels_last=true", "train.device_augment=true"])
    model = prepare_model(torch.nn.Conv2d(3, 4, 3), cfg.train, torch.device("cpu"))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="cache_images"):
        input_pipeline(cfg, [])
    assert input_pipeline(load_config(), []) == (None, None)
    from partreid.data import build_dataset

    items = build_dataset("market1501", tiny_synthetic).train[:5]
    cfg = load_config(
        overrides=[
            "train.cache_images=true",
            "train.device_augment=true",
            "input.height=64",
            "input.width=32",
        ]
    )
    cache, aug = input_pipeline(cfg, items)
    assert cache.shape == (5, 3, 64, 32) and aug(cache).shape == (5, 3, 64, 32)
