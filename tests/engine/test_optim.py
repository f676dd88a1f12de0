import math

import pytest
from torch import nn

from partreid.config import OptimConfig, ScheduleConfig
from partreid.engine.optim import build_optimizer, build_scheduler, lr_factor


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 3)
        self.reduction = nn.Linear(3, 2)
        self.classifier = nn.Linear(2, 2)


def test_lr_mult_groups():
    opt = build_optimizer(Tiny(), OptimConfig(lr=0.01, lr_mult={"reduction|classifier": 10.0}))
    lrs = sorted((g["lr"], len(g["params"])) for g in opt.param_groups)
    assert lrs == [(0.01, 2), (pytest.approx(0.1), 4)]
    with pytest.raises(ValueError, match="match no parameter"):
        build_optimizer(Tiny(), OptimConfig(lr_mult={"neck": 2.0}))


def test_exponential_warmup_then_steps():
    cfg = ScheduleConfig(
        epochs=60,
        warmup="exp",
        warmup_epochs=3,
        warmup_start_lr=1e-5,
        milestones=[30, 50],
        gamma=0.1,
    )
    base = 1e-2
    assert lr_factor(0, cfg, base) * base == pytest.approx(1e-5)
    assert lr_factor(1.5, cfg, base) * base == pytest.approx(math.sqrt(1e-5 * 1e-2))
    assert lr_factor(3, cfg, base) == 1.0 and lr_factor(29.9, cfg, base) == 1.0
    assert lr_factor(30, cfg, base) == pytest.approx(0.1)
    assert lr_factor(55, cfg, base) == pytest.approx(0.01)


def test_linear_warmup_and_per_iteration_scheduler():
    cfg = ScheduleConfig(
        epochs=10, warmup="linear", warmup_epochs=2, warmup_start_lr=0.0, milestones=[5]
    )
    opt = build_optimizer(Tiny(), OptimConfig(lr=0.1, lr_mult={"classifier": 10.0}))
    sched = build_scheduler(opt, cfg, 0.1, iters_per_epoch=4)
    seen = []
    for _ in range(4 * 6):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[0][0] == pytest.approx(0.0) and seen[4][0] == pytest.approx(0.05)
    assert seen[8][0] == pytest.approx(0.1) and seen[20][0] == pytest.approx(0.01)
    assert seen[4][1] == pytest.approx(0.5)  # the multiplier scales the whole schedule
