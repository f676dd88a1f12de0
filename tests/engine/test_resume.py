"""Fault injection: trainings killed (SIGKILL, SIGTERM, SIGINT) at random steps and resumed end
bit-identical to an uninterrupted run; logs hold every step exactly once.

The killed trainings are real subprocesses (``python -m partreid train``) with two data loader
workers; the test watches ``train_log.csv`` (one row per step, ``train.log_period=1``) and kills
the process once the chosen step shows up there -- the process is then somewhere after that step
(in the next step, writing a checkpoint, ...), never at a point the trainer chose.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from partreid.checkpoint import load_checkpoint

ITERS, EPOCHS = 4, 4  # 16 steps: P=2 of the 8 training identities -> 4 batches per epoch
STEPS = ITERS * EPOCHS


def _overrides(tiny_overrides, out):
    return tiny_overrides + [
        f"output_dir={out}",
        "sampler.p=2",
        "sampler.k=2",
        "sampler.num_workers=2",
        f"schedule.epochs={EPOCHS}",
        "schedule.milestones=[2]",
        f"train.max_iters_per_epoch={ITERS}",
        "train.log_period=1",
        "train.checkpoint_every_iters=3",
        "train.keep_checkpoints=2",
        "model.backbone=resnet18",
        "eval.num_visualize=0",
        "eval.flip=false",
    ]


def _launch(cfg_file, overrides, resume):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "partreid", "train", "-c", str(cfg_file)]
    cmd += overrides + (["--resume"] if resume else [])  # last: --resume takes an optional path
    return subprocess.Popen(  # its own process group: signals reach the loader workers too
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _csv_steps(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("step", "").isdigit()]


def _wait_for_step(proc, csv_path, step, timeout=120):
    """Block until ``train_log.csv`` shows ``step`` (or the process ends)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        rows = _csv_steps(csv_path)
        if rows and int(rows[-1]["step"]) >= step:
            return int(rows[-1]["step"])
        if proc.poll() is not None:
            return None
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"step {step} not reached in {timeout}s")


def _final_state(out):
    return load_checkpoint(os.path.join(out, "last.pth"))


def test_killed_and_resumed_runs_match_the_uninterrupted_run(tiny_overrides, tmp_path):
    from partreid.config import load_config
    from partreid.engine import train

    cfg_file = tmp_path / "empty.yaml"
    cfg_file.write_text("{}\n")
    ref_out, run_out = tmp_path / "ref", tmp_path / "run"

    threads = torch.get_num_threads()  # the reference in this process, on one thread like
    torch.set_num_threads(1)  # the subprocesses (OMP_NUM_THREADS=1)
    try:
        train(load_config(None, _overrides(tiny_overrides, ref_out)))
    finally:
        torch.set_num_threads(threads)

    # five SIGKILLs and one SIGTERM at random steps, each followed by a run with --resume; a
    # kill lands wherever the process is once the step shows in the log (possibly before the
    # first checkpoint, inside a checkpoint write, in the next step...)
    rng = np.random.default_rng(11)
    asked = sorted(rng.choice(np.arange(2, STEPS - 2), size=6, replace=False).tolist())
    faults = [(s, signal.SIGTERM if n == 3 else signal.SIGKILL) for n, s in enumerate(asked)]
    csv_path = str(run_out / "train_log.csv")
    overrides = _overrides(tiny_overrides, run_out)
    history, logged = [], 0
    for n, (at, sig) in enumerate(faults):
        t0 = time.time()
        target = max(at, logged + 1)  # a step this process logs (older rows are still there)
        proc = _launch(cfg_file, overrides, resume=n > 0)
        seen = _wait_for_step(proc, csv_path, target)
        assert seen is not None, proc.communicate()[1][-2000:]
        os.killpg(proc.pid, sig)  # like a scheduler pre-empting the job: every process
        _, err = proc.communicate(timeout=120)
        last = run_out / "last.pth"  # absent when killed before the first checkpoint
        saved = load_checkpoint(str(last))["train_state"]["step"] if last.exists() else None
        logged = int(_csv_steps(csv_path)[-1]["step"])
        history.append((signal.Signals(sig).name, target, logged, proc.returncode, saved))
        if sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL
        else:  # finishes the step, writes a checkpoint, exits 128 + signal saying how to resume
            assert proc.returncode == 128 + sig, err[-2000:]
            assert "--resume" in err and "stopped by signal" in err, err[-2000:]
            assert saved == logged  # the checkpoint holds the last step it logged
        print(f"{history[-1]} {time.time() - t0:.1f}s")
    print("faults (signal, step waited for, last step logged, exit code, checkpoint step):")
    for h in history:
        print("  ", h)
    assert len({h[2] for h in history if h[0] == "SIGKILL"}) == 5  # five different kill points

    proc = _launch(cfg_file, overrides, resume=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]

    a, b = _final_state(ref_out), _final_state(run_out)
    assert a["train_state"]["step"] == b["train_state"]["step"] == STEPS
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k  # bit for bit, every tensor
    # the step log holds every step once, with the same losses as the uninterrupted run
    ref_rows, run_rows = _csv_steps(str(ref_out / "train_log.csv")), _csv_steps(csv_path)
    assert [int(r["step"]) for r in run_rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in run_rows] == [r["loss"] for r in ref_rows]
    # no half-written file of a killed write is left behind
    assert not [f for d in (run_out, run_out / "checkpoints") for f in os.listdir(d) if ".tmp" in f]
    # keep_checkpoints=2: only the two newest step checkpoints are left
    left = sorted(os.listdir(run_out / "checkpoints"))
    assert left == ["step_00000015.pth", "step_00000016.pth"], left
    # log.txt: the interrupted runs' lines after their checkpoints are gone
    log_lines = (run_out / "log.txt").read_text().splitlines()
    for step_line in (f"iter {i}/{ITERS} " for i in range(1, ITERS + 1)):  # once per epoch
        assert sum(step_line in ln for ln in log_lines) == EPOCHS, step_line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_writes_a_checkpoint_in_the_middle_of_an_epoch(tiny_overrides, tmp_path, sig):
    from partreid.config import load_config
    from partreid.engine import train
    from partreid.engine import trainer as trainer_mod
    from partreid.engine.checkpointing import TrainingInterrupted

    cfg = load_config(
        None,
        _overrides(tiny_overrides, tmp_path / "run")
        + ["sampler.num_workers=0", "train.checkpoint_every_iters=0"],
    )
    real = trainer_mod.LossComputer

    class SignalAtCall(real):  # the process signals itself during step 6 (epoch 2, iter 2)
        calls = 0

        def forward(self, outputs, targets):
            SignalAtCall.calls += 1
            if SignalAtCall.calls == 6:
                os.kill(os.getpid(), sig)
            return super().forward(outputs, targets)

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    trainer_mod.LossComputer = SignalAtCall
    try:
        with pytest.raises(TrainingInterrupted, match="after step 6 .*--resume") as info:
            train(cfg)
    finally:
        trainer_mod.LossComputer = real
    assert info.value.exit_code == 128 + sig
    state = load_checkpoint(str(tmp_path / "run" / "last.pth"))["train_state"]
    assert (state["step"], state["epoch"], state["iter"]) == (6, 1, 2)
    # the handlers are the ones found before (SIGINT is SIG_IGN when started in the background)
    assert {s: signal.getsignal(s) for s in before} == before
