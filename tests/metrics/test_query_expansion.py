"""Query expansion checked against hand-computed vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from partreid.metrics import alpha_query_expansion, average_query_expansion

S = np.sqrt(0.5)
QF = np.array([[3.0, 0.0]])  # normalised: [1, 0]
# normalised gallery: g0 = [1, 0], g1 = [0, 1], g2 = [S, S]; cos(q, .) = 1, 0, S
GF = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_average_qe_by_hand():
    q, g = average_query_expansion(QF, GF, k=2)
    # neighbours g0 and g2: q' = (q + g0 + g2) / |.|
    np.testing.assert_allclose(q[0], unit([1 + 1 + S, S]), atol=1e-12)
    # without gallery expansion the gallery comes back L2-normalised
    np.testing.assert_allclose(g, [[1, 0], [0, 1], [S, S]], atol=1e-12)


def test_average_qe_uses_given_distances():
    distmat = np.array([[9.0, 1.0, 2.0]])  # says g1 and g2 are the nearest
    q, _ = average_query_expansion(QF, GF, distmat=distmat, k=2)
    np.testing.assert_allclose(q[0], unit([1 + 0 + S, 1 + S]), atol=1e-12)


def test_alpha_qe_by_hand():
    q, _ = alpha_query_expansion(QF, GF, k=2, alpha=3.0)
    # weights cos^3: g0 -> 1, g2 -> S^3, so q' = [1, 0] + [1, 0] + S^3 [S, S] = [2.25, 0.25]
    np.testing.assert_allclose(q[0], unit([2.25, 0.25]), atol=1e-12)
    # alpha = 0 is average QE
    q0, _ = alpha_query_expansion(QF, GF, k=2, alpha=0.0)
    np.testing.assert_allclose(q0, average_query_expansion(QF, GF, k=2)[0], atol=1e-12)


def test_gallery_expansion_by_hand():
    _, g = average_query_expansion(QF, GF, k=1, expand_gallery=True)
    # each gallery item plus its nearest *other* gallery item; g2 is equally close to g0 and
    # g1 and the tie goes to the smaller index (g0)
    np.testing.assert_allclose(g[0], unit([1 + S, S]), atol=1e-12)
    np.testing.assert_allclose(g[1], unit([S, 1 + S]), atol=1e-12)
    np.testing.assert_allclose(g[2], unit([S + 1, S]), atol=1e-12)
    _, ga = alpha_query_expansion(QF, GF, k=1, alpha=3.0, expand_gallery=True)
    np.testing.assert_allclose(ga[0], unit(np.array([1, 0]) + S**3 * np.array([S, S])), atol=1e-12)


def test_types_and_shapes():
    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(11, 5)).astype(np.float32)
    q, g = alpha_query_expansion(torch.from_numpy(qf), torch.from_numpy(gf), k=3)
    assert isinstance(q, torch.Tensor) and q.shape == (7, 5) and g.shape == (11, 5)
    np.testing.assert_allclose(q.norm(dim=1).numpy(), 1, atol=1e-6)
    qn, gn = alpha_query_expansion(qf, gf, k=3)
    assert isinstance(qn, np.ndarray)
    np.testing.assert_allclose(qn, q.numpy(), atol=1e-6)
    # k larger than the gallery is clipped
    q_all, _ = average_query_expansion(qf, gf, k=50)
    expected = qf / np.linalg.norm(qf, axis=1, keepdims=True) + (
        gf / np.linalg.norm(gf, axis=1, keepdims=True)
    ).sum(0)
    np.testing.assert_allclose(
        q_all, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5
    )
    with pytest.raises(ValueError, match="distmat"):
        average_query_expansion(qf, gf, distmat=np.zeros((3, 3)))
