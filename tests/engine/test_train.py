import json

import pytest
import torch

from partreid.checkpoint import CheckpointError, load_checkpoint
from partreid.config import load_config
from partreid.engine import train
from partreid.models import build_model


def test_resume_after_epoch_one_reaches_same_weights(tiny_overrides, tmp_path):
    straight = load_config(None, tiny_overrides + [f"output_dir={tmp_path / 'a'}"])
    train(straight)
    first = load_config(
        None, tiny_overrides + [f"output_dir={tmp_path / 'b'}", "schedule.epochs=1"]
    )
    train(first)
    assert load_checkpoint(str(tmp_path / "b" / "last.pth"))["train_state"]["epoch"] == 1
    second = load_config(None, tiny_overrides + [f"output_dir={tmp_path / 'b'}"])
    train(second, resume="auto")
    a = load_checkpoint(str(tmp_path / "a" / "last.pth"))
    b = load_checkpoint(str(tmp_path / "b" / "last.pth"))
    assert a["train_state"]["epoch"] == b["train_state"]["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    # the run folder holds what the issue asks for
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    for key in ("rank1", "rank5", "rank10", "mAP", "mINP"):
        assert 0.0 <= m[key] <= 1.0
    for f in ("config.yaml", "log.txt", "train_log.csv", "ranked_list.png", "report.html"):
        assert (tmp_path / "a" / f).exists(), f


def test_log_names_each_loss(tiny_overrides, tmp_path):
    cfg = load_config(None, tiny_overrides + ["schedule.epochs=1", "train.log_period=1"])
    train(cfg)
    header = (tmp_path / "run" / "train_log.csv").read_text().splitlines()[0].split(",")
    assert {"cross_entropy", "triplet", "loss", "lr"} <= set(header)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    from partreid.checkpoint import model_meta, save_checkpoint
    from partreid.inference import load_model

    pcb = build_model("pcb", 5, backbone="resnet18")
    path = tmp_path / "pcb.pth"
    cfg = load_config(None, ["model={name: pcb, backbone: resnet18}"])
    save_checkpoint(str(path), pcb.state_dict(), model_meta(cfg, pcb, 5))
    with pytest.raises(CheckpointError, match="holds model 'pcb' \\(backbone 'resnet18'\\)"):
        load_model(str(path), overrides={"name": "pcb", "backbone": "resnet34"})
    with pytest.raises(CheckpointError, match="does not fit"):  # an option that changes shapes
        load_model(str(path), overrides={"stripes": 4})
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.pth"))


def test_checkpoint_period_and_the_resume_checkpoint_is_released(
    tiny_overrides, tmp_path, monkeypatch
):
    import gc
    import os
    import weakref

    from partreid.engine import trainer as trainer_mod

    base = tiny_overrides + ["train.checkpoint_period=2", "train.keep_checkpoints=5"]
    train(load_config(None, base + ["schedule.epochs=3"]))  # 2 steps an epoch
    steps = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    assert steps == ["step_00000004.pth", "step_00000006.pth"]  # epoch 2 and the end

    class Checkpoint(dict):  # a plain dict that a weak reference can watch
        pass

    real_read, real_loss, read = trainer_mod.Checkpointer.resume_path, trainer_mod.LossComputer, []

    def resume_path(self, resume):
        path, ckpt = real_read(self, resume)
        ckpt = Checkpoint(ckpt)
        read.append(weakref.ref(ckpt))
        return path, ckpt

    class CheckReleased(real_loss):
        def forward(self, outputs, targets):
            gc.collect()
            assert read and read[0]() is None, "the resume checkpoint is still held"
            return super().forward(outputs, targets)

    monkeypatch.setattr(trainer_mod.Checkpointer, "resume_path", resume_path)
    monkeypatch.setattr(trainer_mod, "LossComputer", CheckReleased)
    train(load_config(None, base + ["schedule.epochs=4"]), resume="auto")
    steps = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    assert steps == ["step_00000004.pth", "step_00000006.pth", "step_00000008.pth"]
    assert load_checkpoint(str(tmp_path / "run" / "last.pth"))["train_state"]["step"] == 8
