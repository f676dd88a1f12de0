"""Activation balanced pooling (RMGL Eqs. 8-11) against hand-derived borders and a loop reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from partreid.models.abp import (
    ActivationBalancedPooling,
    abp_borders,
    abp_pool,
    max_activation_histogram,
    pool_between,
)
from partreid.models.parts import stripe_pool


def _map_with_maxima(rows, h, w=3, cols=None):
    """1 x C x h x w map: channel c has its single maximum at (rows[c], cols[c])."""
    c = len(rows)
    x = torch.rand(1, c, h, w) * 0.5
    for ch, r in enumerate(rows):
        x[0, ch, r, (cols[ch] if cols else ch) % w] = 1.0 + ch
    return x


# ---------------------------------------------------------------- independent reference (loops)
def reference_borders(x: np.ndarray, k: int) -> list:
    """Eq. 10 read literally, one image at a time, then the minimal one-row-per-stripe repair."""
    c, h, w = x.shape
    hist = [0] * h
    for ch in range(c):
        flat = x[ch].reshape(-1)
        pos = int(np.argmax(flat))  # first maximum in row-major order
        hist[pos // w] += 1
    cum = [0]
    for r in range(h):
        cum.append(cum[-1] + hist[r])  # cum[h] = H_x(h), h = 0..H
    borders = [0]
    for i in range(1, k):
        t = math.ceil(i * c / k)
        borders.append(max(hh for hh in range(h + 1) if cum[hh] <= t))
    borders.append(h)
    for i in range(1, k):  # forward: every stripe at least one row
        borders[i] = max(borders[i], borders[i - 1] + 1)
    for i in range(k - 1, 0, -1):  # backward: leave room for the stripes below
        borders[i] = min(borders[i], borders[i + 1] - 1)
    return borders


def reference_pool(x: np.ndarray, borders, mode: str) -> np.ndarray:
    out = []
    for a, b in zip(borders[:-1], borders[1:]):
        part = x[:, a:b, :]
        out.append(part.mean(axis=(1, 2)) if mode == "avg" else part.max(axis=(1, 2)))
    return np.stack(out, axis=-1)


# ---------------------------------------------------------------- hand-derived borders
def test_histogram_counts_rows_of_channel_maxima():
    x = _map_with_maxima([0, 2, 2, 5, 2], h=6)
    assert max_activation_histogram(x).tolist() == [[1, 0, 3, 0, 0, 1]]


@pytest.mark.parametrize(
    "row, expected",
    [
        (
            2,
            [0, 2, 3, 6],
        ),  # T = 2, 4: H_x(2) = 0 <= T, H_x(3) = 6 > T -> h1 = h2 = 2 -> [0, 2, 3, 6]
        (0, [0, 1, 2, 6]),  # h1 = h2 = 0 -> pushed down to one row each
        (5, [0, 4, 5, 6]),  # h1 = h2 = 5 -> pushed up so the last stripes keep a row
    ],
)
def test_all_maxima_in_one_row(row, expected):
    x = _map_with_maxima([row] * 6, h=6)
    assert abp_borders(x, 3).tolist() == [expected]


@pytest.mark.parametrize(
    "k, expected",
    [
        (2, [0, 3, 6]),  # T = 6: H_x = 2, 4, 6, 8, ... -> h1 = 3
        (3, [0, 2, 4, 6]),  # T = 4, 8 -> uniform stripes
        (4, [0, 1, 3, 4, 6]),  # T = 3, 6, 9 -> h = 1, 3, 4 (the "<=" of Eq. 10)
        (6, [0, 1, 2, 3, 4, 5, 6]),
    ],
)
def test_uniform_maxima(k, expected):
    rows = [r for r in range(6) for _ in range(2)]  # 12 channels, 2 maxima per row
    x = _map_with_maxima(rows, h=6, cols=list(range(12)))
    assert abp_borders(x, k).tolist() == [expected]


def test_ceil_threshold_with_c_not_divisible_by_k():
    # C = 5, one maximum per row of 5, k = 2: T = ceil(5 / 2) = 3 -> h1 = 3.
    x = _map_with_maxima([0, 1, 2, 3, 4], h=5)
    assert abp_borders(x, 2).tolist() == [[0, 3, 5]]
    # k = 3: T = ceil(5/3) = 2, ceil(10/3) = 4 -> [0, 2, 4, 5]
    assert abp_borders(x, 3).tolist() == [[0, 2, 4, 5]]


def test_maximum_position_uses_both_axes():
    # channel 0 peaks at row 3 col 2; a large value in row 0 of ANOTHER channel must not count.
    x = torch.zeros(1, 2, 4, 3)
    x[0, 0, 3, 2] = 5.0
    x[0, 1, 0, 0] = 9.0
    assert max_activation_histogram(x).tolist() == [[1, 0, 0, 1]]


# ---------------------------------------------------------------- vectorised == loop reference
@pytest.mark.parametrize("k", [1, 2, 3, 4, 6])
def test_borders_and_pooling_match_per_image_reference(k):
    g = torch.Generator().manual_seed(k)
    n, c, h, w = 7, 40, 12, 4
    x = torch.rand(n, c, h, w, generator=g)
    # Skew some images so that single rows hold many maxima (empty-stripe repairs kick in).
    x[1, :30, 4] += 2.0
    x[2, :, 0] += 2.0
    x[3, :, h - 1] += 2.0
    x[4, ::2, 7:9] += 1.5
    borders = abp_borders(x, k)
    assert borders.shape == (n, k + 1) and borders.dtype == torch.long
    assert (borders[:, 0] == 0).all() and (borders[:, -1] == h).all()
    assert (borders.diff(dim=1) >= 1).all(), "every stripe keeps at least one row"
    xn = x.numpy()
    for i in range(n):
        ref = reference_borders(xn[i], k)
        assert borders[i].tolist() == ref, f"image {i}"
        for mode in ("avg", "max"):
            np.testing.assert_allclose(
                abp_pool(x, k, mode)[i].numpy(),
                reference_pool(xn[i], ref, mode),
                rtol=1e-5,
                atol=1e-6,
            )


def test_stripe_counts_hold_at_most_the_threshold():
    """Eq. 10's intent: stripe c ends where the cumulative count would exceed ceil(c C / k)."""
    x = torch.rand(5, 64, 16, 4, generator=torch.Generator().manual_seed(0))
    k = 4
    borders = abp_borders(x, k)
    cum = torch.cat([torch.zeros(5, 1, dtype=torch.long), max_activation_histogram(x).cumsum(1)], 1)
    for c in range(1, k):
        t = math.ceil(c * 64 / k)
        hc = borders[:, c]
        assert (cum.gather(1, hc[:, None]) <= t).all()
        assert (cum.gather(1, (hc + 1).clamp(max=16)[:, None]) > t).all()


def test_uniform_borders_give_uniform_stripe_pooling():
    rows = [r for r in range(6) for _ in range(2)]
    x = _map_with_maxima(rows, h=6, cols=list(range(12)))
    for mode in ("avg", "max"):
        torch.testing.assert_close(abp_pool(x, 3, mode), stripe_pool(x, 3, mode))


def test_module_and_errors():
    x = torch.rand(2, 8, 6, 2)
    m = ActivationBalancedPooling(3, "max")
    torch.testing.assert_close(m(x), abp_pool(x, 3, "max"))
    assert m(x).shape == (2, 8, 3)
    with pytest.raises(ValueError, match="height 6 into 7"):
        abp_borders(x, 7)
    with pytest.raises(ValueError, match="'avg' or 'max'"):
        pool_between(x, abp_borders(x, 2), "median")
    with pytest.raises(ValueError, match="'avg' or 'max'"):
        ActivationBalancedPooling(2, "sum")
