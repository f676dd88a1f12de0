"""Guarded training: non-finite losses (stop / skip), failing checkpoint writes, best.pth."""

from __future__ import annotations

import csv
import errno
import math
import os
from pathlib import Path

import pytest
import torch

from partreid.checkpoint import CheckpointError, load_checkpoint
from partreid.config import load_config
from partreid.engine import train
from partreid.engine import trainer as trainer_mod
from partreid.engine.checkpointing import NonFiniteLossError


def _cfg(tiny_overrides, *extra):
    return load_config(
        None,
        tiny_overrides
        + [
            "sampler.p=2",
            "sampler.k=2",
            "schedule.epochs=2",
            "train.max_iters_per_epoch=4",
            "train.log_period=1",
            "train.checkpoint_every_iters=2",
            "model.backbone=resnet18",
            "eval.num_visualize=0",
            "eval.flip=false",
            *extra,
        ],
    )


def _nan_at(monkeypatch, calls, term="triplet"):
    """Make the loss term ``term`` NaN at the given (1-based) loss computations."""
    real = trainer_mod.LossComputer
    count = {"n": 0}

    class NaNAt(real):
        def forward(self, outputs, targets):
            loss, parts = super().forward(outputs, targets)
            count["n"] += 1
            if count["n"] in calls:
                loss = loss * float("nan")
                parts = {**parts, term: float("nan")}
            return loss, parts

    monkeypatch.setattr(trainer_mod, "LossComputer", NaNAt)


def _rows(out):
    with open(os.path.join(out, "train_log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_nan_stops_at_its_step_naming_the_term_and_keeps_the_last_good_checkpoint(
    tiny_overrides, tmp_path, monkeypatch
):
    cfg = _cfg(tiny_overrides)
    _nan_at(monkeypatch, {5})
    with pytest.raises(
        NonFiniteLossError, match=r"'triplet' became nan at step 5 \(epoch 2, iter 1"
    ):
        train(cfg)
    out = cfg.output_dir
    ckpt = load_checkpoint(os.path.join(out, "last.pth"))  # loads: the epoch-1 end, step 4
    assert ckpt["train_state"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert [int(r["step"]) for r in _rows(out)] == [1, 2, 3, 4]  # nothing logged for step 5


def test_nan_skip_mode_skips_the_steps_and_counts_them(tiny_overrides, tmp_path, monkeypatch):
    ref = _cfg(tiny_overrides, f"output_dir={tmp_path / 'ref'}")
    train(ref)
    cfg = _cfg(tiny_overrides, "train.nonfinite=skip")
    _nan_at(monkeypatch, {3, 6})
    train(cfg)
    rows = _rows(cfg.output_dir)
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert [int(r["nonfinite_skipped"]) for r in rows] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert math.isnan(float(rows[2]["triplet"])) and math.isnan(float(rows[5]["triplet"]))
    state = load_checkpoint(os.path.join(cfg.output_dir, "last.pth"))
    assert state["train_state"]["nonfinite_skipped"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # the same batches, minus two updates: the weights differ from the run without NaNs
    ref_state = load_checkpoint(os.path.join(ref.output_dir, "last.pth"))["model"]
    assert not all(torch.equal(v, state["model"][k]) for k, v in ref_state.items())
    assert "2 step(s) were skipped" in Path(cfg.output_dir, "log.txt").read_text()


@pytest.mark.parametrize(
    "fault", ["disk_full", "read_only_rename", "read_only_folder"], ids=lambda f: f
)
def test_failing_write_leaves_the_previous_checkpoint_loadable(
    tiny_overrides, tmp_path, monkeypatch, fault
):
    import partreid.checkpoint as ck

    cfg = _cfg(tiny_overrides, "train.keep_checkpoints=0")  # checkpoints at steps 2, 4, 6, 8
    out = cfg.output_dir
    real_save, real_replace = torch.save, os.replace
    writes = {"n": 0}

    def save(obj, f, *a, **k):
        writes["n"] += 1
        if writes["n"] == 3:  # the write of step 6
            if fault == "disk_full":
                real_save(obj, f, *a, **k)  # a partial file, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if fault == "read_only_folder":
                os.chmod(out, 0o555)
                if os.geteuid() == 0:  # root writes anyway: make the rename fail as it would
                    monkeypatch.setattr(ck.os, "replace", _raise(errno.EACCES, "Permission denied"))
        return real_save(obj, f, *a, **k)

    def _raise(code, text):
        def replace(src, dst):
            if str(dst).endswith("last.pth"):
                raise OSError(code, text, dst)
            return real_replace(src, dst)

        return replace

    monkeypatch.setattr(ck.torch, "save", save)
    if fault == "read_only_rename":
        calls = {"n": 0}

        def replace(src, dst):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), dst)
            return real_replace(src, dst)

        monkeypatch.setattr(ck.os, "replace", replace)
    try:
        with pytest.raises(CheckpointError) as info:
            train(cfg)
    finally:
        os.chmod(out, 0o755)
    msg = str(info.value)
    assert "could not write checkpoint" in msg and "last.pth" in msg
    assert "previous checkpoint there (if any) is unchanged" in msg
    why = {"disk_full": "No space left", "read_only_rename": "Read-only", "read_only_folder": ""}
    assert why[fault] in msg
    assert "\n" not in msg
    monkeypatch.undo()
    ckpt = load_checkpoint(os.path.join(out, "last.pth"))
    assert ckpt["train_state"]["step"] == 4
    assert not [f for f in os.listdir(out) if ".tmp" in f]  # no half-written file left behind


def test_best_and_kept_step_checkpoints(tiny_overrides, tmp_path):
    cfg = _cfg(
        tiny_overrides,
        "schedule.epochs=3",
        "train.eval_period=1",
        "train.keep_checkpoints=2",
        "train.checkpoint_every_iters=3",
    )
    train(cfg)
    out = cfg.output_dir
    files = sorted(os.listdir(os.path.join(out, "checkpoints")))
    assert files == ["step_00000009.pth", "step_00000012.pth"]
    last = load_checkpoint(os.path.join(out, "last.pth"))
    assert last["train_state"]["step"] == 12
    best = load_checkpoint(os.path.join(out, "best.pth"))
    # evaluations after epochs 1 and 2 (the final one is the run report); best = higher mAP
    log = Path(out, "log.txt").read_text()
    maps = [
        float(line.split("mAP ")[1].split("%")[0])
        for line in log.splitlines()
        if line.split(" ", 1)[1].startswith("epoch ") and "mAP" in line
    ]
    assert len(maps) == 2
    want_step = 4 if maps[0] >= maps[1] else 8
    assert best["train_state"]["step"] == want_step
    assert best["meta"]["metrics"]["mAP"] * 100 == pytest.approx(max(maps), abs=0.051)
    assert last["train_state"]["best"]["step"] == want_step
