"""compute_distance and the stable top-k helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from partreid.metrics import compute_distance
from partreid.metrics.distance import merge_topk_stable, topk_smallest_stable


def test_euclidean_and_cosine_against_numpy():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(5, 7)), rng.normal(size=(9, 7))
    expected = np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))
    out = compute_distance(q, g)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, expected, atol=1e-10)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        g / np.linalg.norm(g, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(compute_distance(q, g, "cosine"), 1 - cos, atol=1e-10)
    t = compute_distance(torch.from_numpy(q).float(), torch.from_numpy(g).float(), "cosine")
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), 1 - cos, atol=1e-5)


def test_self_distance_is_zero_not_nan():
    f = np.array([[1e3, 1e3], [1.0, 2.0]], dtype=np.float32)
    d = compute_distance(f, f)
    assert np.isfinite(d).all() and d[0, 0] >= 0 and d[1, 1] >= 0


def test_errors():
    with pytest.raises(ValueError, match="metric"):
        compute_distance(np.zeros((2, 3)), np.zeros((2, 3)), "l1")
    with pytest.raises(ValueError, match="dimension"):
        compute_distance(np.zeros((2, 3)), np.zeros((2, 4)))


@pytest.mark.parametrize("k", [1, 4, 10, 30])
def test_topk_smallest_stable_equals_stable_sort(k):
    x = torch.from_numpy(np.random.default_rng(k).integers(0, 4, (50, 30)).astype(np.float32))
    vals, idx = topk_smallest_stable(x, k)
    sv, si = torch.sort(x, dim=1, stable=True)
    assert torch.equal(idx, si[:, :k]) and torch.equal(vals, sv[:, :k])
    # merging two column halves gives the same lists
    va, ia = topk_smallest_stable(x[:, :13], k)
    vb, ib = topk_smallest_stable(x[:, 13:], k)
    vm, im = merge_topk_stable(va, ia, vb, ib + 13, k)
    assert torch.equal(im, si[:, :k])
