"""Safe, checked checkpoints: no code runs on load, damaged files give one clear line,
``partreid inspect`` says what a file holds."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from torch import nn

from partreid.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_meta,
    payload_digest,
    save_checkpoint,
)
from partreid.cli import main
from partreid.config import load_config


def _write(path, with_train_state=True):
    cfg = load_config(None, ["model={name: bot, backbone: resnet18}"])
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32))
    model.feature_dim = 32
    train_state = None
    if with_train_state:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.randn(4, 64)).sum().backward()
        opt.step()
        train_state = {"optimizer": opt.state_dict(), "epoch": 1, "iter": 3, "step": 7}
    meta = model_meta(cfg, model, 5, epoch=1, step=7, metrics={"mAP": 0.5})
    save_checkpoint(str(path), model.state_dict(), meta, train_state)
    return model


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):  # unpickling this calls os.system("touch TARGET")
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("where", ["top", "nested"])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, where):
    target = tmp_path / "pwned"
    evil = _Evil(target)
    # the payload really runs code when unpickled without weights_only (checked on a copy)
    pickle.loads(pickle.dumps(evil))
    assert target.exists()
    target.unlink()
    path = tmp_path / "evil.pth"
    payload = {"format": "partreid", "format_version": 2, "model": {"w": torch.zeros(2)}}
    if where == "top":
        payload["hook"] = evil
    else:
        payload["meta"] = {"config": {"x": [evil]}}
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(path))
    assert not target.exists()
    msg = str(info.value)
    assert msg.startswith(f"refusing to load {path}") and "could run code" in msg
    assert "posix.system" in msg and "\n" not in msg
    assert main(["inspect", str(path)]) == 2
    assert not target.exists()


def test_truncated_checkpoints_give_one_clear_line(tmp_path, capsys):
    path = tmp_path / "good.pth"
    _write(path)
    data = path.read_bytes()
    for frac in (0.0, 0.1, 0.5, 0.9, 0.999):
        cut = tmp_path / f"cut{frac}.pth"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(str(cut))
        msg = str(info.value)
        assert "\n" not in msg and str(cut) in msg
        assert "truncated, corrupted" in msg or "corrupted" in msg
    assert main(["inspect", str(tmp_path / "cut0.5.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("partreid inspect: error: cannot read checkpoint") and "\n" not in err


def test_bit_flips_are_detected_or_harmless(tmp_path):
    """torch.load does not check the zip CRCs; the payload checksum catches flipped bits."""
    path = tmp_path / "good.pth"
    _write(path)
    ref = load_checkpoint(str(path))
    data = path.read_bytes()
    detected = harmless = 0
    for pos in range(7, len(data), max(1, len(data) // 150)):
        flipped = bytearray(data)
        flipped[pos] ^= 0x04
        bad = tmp_path / "flip.pth"
        bad.write_bytes(bytes(flipped))
        try:
            got = load_checkpoint(str(bad))
        except CheckpointError as exc:
            assert "\n" not in str(exc) and str(bad) in str(exc)
            # (a flip inside a class name, "torch" -> "tovch", asks for an unknown global: that
            # is refused as unsafe, never imported)
            detected += 1
            continue
        # a flip that went through must have hit bytes that carry nothing (zip padding, names)
        assert payload_digest(got) == payload_digest(ref)
        harmless += 1
    assert detected > 100  # most of the file is tensor data: those flips are caught
    # a flip inside the weights in particular: the checksum names the problem
    pos = data.index(ref["model"]["0.weight"].numpy().tobytes()[:64]) + 10
    flipped = bytearray(data)
    flipped[pos] ^= 0x01
    (tmp_path / "w.pth").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(str(tmp_path / "w.pth"))


def test_files_without_checksum_still_load(tmp_path):
    """format_version 2 files written before the checksum existed stay readable."""
    path = tmp_path / "old.pth"
    _write(path)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["checksum"]
    torch.save(ckpt, path)
    assert set(load_checkpoint(str(path))) == {
        "format",
        "format_version",
        "model",
        "meta",
        "train_state",
    }


def test_inspect_prints_what_the_checkpoint_holds(tmp_path, capsys):
    path = tmp_path / "run.pth"
    model = _write(path)
    assert main(["inspect", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    n = sum(t.numel() for t in model.state_dict().values())
    assert d["weights"]["parameters"] == n
    assert d["weights"]["bytes"] == sum(
        t.numel() * t.element_size() for t in model.state_dict().values()
    )
    assert (d["epoch"], d["step"], d["iter_in_epoch"]) == (1, 7, 3)
    assert d["metrics"] == {"mAP": 0.5}
    assert d["has_optimizer_state"] is True
    assert d["model"]["name"] == "bot" and d["config"]["model"]["backbone"] == "resnet18"
    assert d["torch_version"] == torch.__version__.split("+")[0]
    assert d["partreid_version"] and d["dataset"] == "synthetic"
    assert d["checksum"] == "verified"
    export = tmp_path / "export.pth"
    _write(export, with_train_state=False)
    assert main(["inspect", str(export)]) == 0
    text = capsys.readouterr().out
    assert "no (inference-only export)" in text and "epoch 1, step 7" in text
    assert "mAP 0.5000" in text
