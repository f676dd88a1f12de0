import math

import pytest
import torch

from partreid.losses import LossComputer, cross_entropy, mse_supervision, triplet_batch_hard


def _triplet_reference(x, y, margin):
    n = len(y)
    losses = []
    for a in range(n):
        pos = [torch.dist(x[a], x[j]).item() for j in range(n) if j != a and y[j] == y[a]]
        neg = [torch.dist(x[a], x[j]).item() for j in range(n) if y[j] != y[a]]
        if not pos or not neg:
            continue
        z = max(pos) - min(neg)
        losses.append(math.log1p(math.exp(z)) if margin is None else max(0.0, z + margin))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("margin", [0.3, 1.2, None])
def test_triplet_matches_per_anchor_loop(margin):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=g)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3, 4, 4, 4, 5])  # id 5: no positive
    got = triplet_batch_hard(x, y, margin).item()
    assert got == pytest.approx(_triplet_reference(x, y, margin), rel=1e-5)


def test_triplet_gradient_finite_for_duplicate_features():
    x = torch.ones(4, 3, requires_grad=True)
    loss = triplet_batch_hard(x, torch.tensor([0, 0, 1, 1]), 0.3)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_cross_entropy_label_smoothing_formula():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([0, 2])
    eps = 0.1
    logp = torch.log_softmax(logits, 1)
    q = torch.full_like(logp, eps / 3)
    q[torch.arange(2), y] += 1 - eps
    ref = -(q * logp).sum(1).mean()
    assert cross_entropy(logits, y, eps).item() == pytest.approx(ref.item(), rel=1e-6)


def test_mse_reductions():
    a = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert mse_supervision(a, b, "sum").item() == pytest.approx((5 + 2) / 2)
    assert mse_supervision(a, b, "mean").item() == pytest.approx(7 / 4)


def test_loss_computer_sums_items_applies_weights_and_reports_terms():
    torch.manual_seed(0)
    y = torch.tensor([0, 0, 1, 1])
    logits = [torch.randn(4, 3), torch.randn(4, 3)]
    feats = [torch.randn(4, 5)]
    pairs = [(torch.randn(4, 5), torch.randn(4, 5))]
    lc = LossComputer(
        [
            {"type": "cross_entropy", "output": "logits", "weight": 0.5},
            {"type": "triplet", "output": "triplet", "margin": 0.3},
            {"type": "mse", "output": "mse", "weight": 2.0, "reduce": "mean", "reduction": "mean"},
        ]
    )
    total, parts = lc({"logits": logits, "triplet": feats, "mse": pairs}, y)
    ce = sum(cross_entropy(l, y) for l in logits)
    tri = triplet_batch_hard(feats[0], y, 0.3)
    mse = mse_supervision(*pairs[0], "mean")
    assert parts["cross_entropy"] == pytest.approx(ce.item(), rel=1e-6)
    assert total.item() == pytest.approx((0.5 * ce + tri + 2.0 * mse).item(), rel=1e-6)


def test_loss_computer_empty_output_is_zero_and_missing_output_is_named():
    lc = LossComputer(
        [{"type": "cross_entropy", "output": "logits"}, {"type": "mse", "output": "mse"}]
    )
    y = torch.tensor([0, 1])
    total, parts = lc({"logits": [torch.randn(2, 2)], "mse": []}, y)
    assert parts["mse"] == 0.0
    with pytest.raises(KeyError, match="'mse'"):
        lc({"logits": [torch.randn(2, 2)]}, y)


def test_loss_computer_rejects_unknown_keys_and_types():
    with pytest.raises(KeyError, match="margn"):
        LossComputer([{"type": "triplet", "output": "triplet", "margn": 0.3}])
    with pytest.raises(KeyError, match="unknown loss"):
        LossComputer([{"type": "arcface", "output": "logits"}])
