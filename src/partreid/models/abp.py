"""Activation balanced pooling (ABP; RMGL paper, Sec. III-C, Eqs. 8-11).

Instead of cutting a feature map into ``k`` stripes of equal height, ABP cuts it where each
stripe holds about the same number of *channel maxima*:

1. Eq. 8: for every channel, the spatial position of its maximum (ties: the first position in
   row-major order, i.e. ``argmax``).
2. Eq. 9: the max-activation histogram over rows, ``count[r]`` = number of channels whose
   maximum lies in row ``r``; ``H_x(h)`` = cumulative count of rows ``1..h`` (1-based), so
   ``H_x(0) = 0`` and ``H_x(H) = C``.
3. Eq. 10: border ``h_c`` (``c = 1..k-1``) is the largest ``h`` with
   ``H_x(h) <= ceil(c * C / k)`` (then ``H_x(h_c + 1) > ceil(c * C / k)`` as the paper asks);
   ``h_0 = 0``, ``h_k = H``. Stripe ``c`` covers the 0-based rows ``h_{c-1} .. h_c - 1``.
4. Eq. 11: each stripe is pooled (average, as the paper; ``max`` as a switch).

Eq. 10 alone can give empty stripes (a row holding more than ``C/k`` maxima makes two borders
coincide; a first row holding more than ``C/k`` gives ``h_1 = 0``). We then move borders
minimally so that every stripe keeps at least one row: first forward,
``h_c <- max(h_c, h_{c-1} + 1)``, then backward, ``h_c <- min(h_c, h_{c+1} - 1)`` (which for
``h_k = H`` is ``min(h_c, H - k + c)``). Both passes are vectorised over the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidValueError


def max_activation_histogram(x: torch.Tensor) -> torch.Tensor:
    """Eqs. 8-9: per image, the number of channels whose spatial maximum lies in each row.

    Args:
        x: N x C x H x W feature map.
    Returns:
        N x H long tensor; every row sums to C.
    """
    n, c, h, w = x.shape
    rows = x.detach().flatten(2).argmax(dim=2) // w  # N x C: row of each channel's maximum
    counts = torch.zeros(n, h, dtype=torch.long, device=x.device)
    return counts.scatter_add_(1, rows, torch.ones_like(rows))


def abp_borders(x: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 10: stripe borders ``h_0 = 0 < h_1 < ... < h_k = H`` of every image.

    Args:
        x: N x C x H x W feature map (needs ``H >= k``).
        k: number of stripes.
    Returns:
        N x (k + 1) long tensor; stripe ``c`` (1-based) covers rows ``h_{c-1} .. h_c - 1``.
    """
    n, c, h, w = x.shape
    if not 1 <= k <= h:
        raise InvalidValueError(
            f"activation balanced pooling cannot cut a map of height {h} into {k} stripes"
        )
    cum = max_activation_histogram(x).cumsum(dim=1)  # N x H: H_x(1..H)
    idx = torch.arange(1, k, device=x.device)  # border index c = 1..k-1
    thresholds = (idx * c + k - 1) // k  # ceil(c * C / k), exact integer arithmetic
    # Largest h with H_x(h) <= threshold = number of h in 1..H with H_x(h) <= threshold
    # (H_x is non-decreasing, and H_x(0) = 0 always qualifies).
    inner = (cum[:, None, :] <= thresholds[None, :, None]).sum(dim=2)  # N x (k-1)
    zero = torch.zeros(n, 1, dtype=torch.long, device=x.device)
    # Forward pass h_c <- max(h_c, h_{c-1} + 1), closed form: c + cummax_{j <= c}(h_j - j), h_0 = 0.
    shifted = torch.cat([zero, inner - idx], dim=1).cummax(dim=1).values[:, 1:]
    inner = shifted + idx
    # Backward pass h_c <- min(h_c, h_{c+1} - 1) with h_k = H, closed form: min(h_c, H - k + c).
    inner = torch.minimum(inner, h - k + idx)
    return torch.cat([zero, inner, torch.full_like(zero, h)], dim=1)


def stripe_masks(borders: torch.Tensor, height: int) -> torch.Tensor:
    """N x (k+1) borders -> N x k x H boolean masks (row ``r`` in stripe ``c``)."""
    rows = torch.arange(height, device=borders.device)
    lo, hi = borders[:, :-1, None], borders[:, 1:, None]
    return (rows >= lo) & (rows < hi)


def pool_between(x: torch.Tensor, borders: torch.Tensor, mode: str = "avg") -> torch.Tensor:
    """Pool each image's row ranges ``[h_{c-1}, h_c)`` (per-image borders) -> N x C x k.

    Vectorised with row masks: average = (row sums) @ mask / (rows x W), max = masked max.
    """
    n, c, h, w = x.shape
    masks = stripe_masks(borders, h)  # N x k x H
    if mode == "avg":
        row_sums = x.sum(dim=3)  # N x C x H
        sums = torch.bmm(row_sums, masks.transpose(1, 2).to(x.dtype))  # N x C x k
        sizes = (borders[:, 1:] - borders[:, :-1]).to(x.dtype) * w  # N x k
        return sums / sizes[:, None, :]
    if mode == "max":
        row_max = x.amax(dim=3)  # N x C x H
        filled = row_max[:, :, None, :].masked_fill(~masks[:, None], float("-inf"))
        return filled.amax(dim=3)
    raise InvalidValueError(f"ABP pooling mode must be 'avg' or 'max', got {mode!r}")


def abp_pool(x: torch.Tensor, k: int, mode: str = "avg") -> torch.Tensor:
    """Activation balanced pooling of ``x`` (N x C x H x W) into ``k`` stripes -> N x C x k.

    ``mode="avg"`` is the paper's Eq. 11; ``"max"`` pools like the training-time GMP.
    """
    return pool_between(x, abp_borders(x, k), mode)


class ActivationBalancedPooling(nn.Module):
    """Module form of :func:`abp_pool` (no parameters): N x C x H x W -> N x C x k."""

    def __init__(self, k: int, mode: str = "avg"):
        super().__init__()
        if mode not in ("avg", "max"):
            raise InvalidValueError(f"ABP pooling mode must be 'avg' or 'max', got {mode!r}")
        self.k = k
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return abp_pool(x, self.k, self.mode)

    def extra_repr(self) -> str:
        return f"k={self.k}, mode={self.mode!r}"
