"""Shared pieces of the model tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class RowMap(nn.Module):
    """Stands in for a branch: an N x c x H x W map with channel 0 = row index, 1 = -row index."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        n, _, h, w = x.shape
        rows = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(n, 1, h, w)
        out = torch.zeros(n, self.channels, h, w)
        out[:, :1] = rows
        out[:, 1:2] = -rows
        return out


@pytest.fixture
def row_map():
    """The :class:`RowMap` class, for tests that swap a branch's layers for it."""
    return RowMap
