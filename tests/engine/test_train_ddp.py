"""The trainer under torchrun (2 CPU processes, gloo) and the fast input path on the CPU.

The DDP runs are real subprocesses (``python -m torch.distributed.run ... -m partreid train``)
on the tiny synthetic set; ``sampler.p=4`` is the GLOBAL number of identities per step, so each
of the 2 processes trains on 2 identities x K=2 images.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from partreid.checkpoint import load_checkpoint
from partreid.config import load_config
from partreid.data import build_dataset
from partreid.data.sampler import PKSampler
from partreid.engine import train
from partreid.engine.eval_run import evaluate_checkpoint

WORLD = 2


def _overrides(tiny_run, out: Path) -> list:
    """The shared tiny run, logging every step, with a short collective timeout."""
    return tiny_run(out) + [
        "train.log_period=1",
        "train.dist_timeout_s=20",
        "eval.num_visualize=0",
        "eval.batch_size=8",
    ]


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text("seed: 0\n")
    return path


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("PARTREID_DEBUG", None)
    return env


def _torchrun(cfg: Path, overrides: list, *extra: str, limit: float = 150):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(WORLD),
        "-m",
        "partreid",
        "train",
        "-c",
        str(cfg),
        *overrides,
        *extra,  # (after the overrides: `--resume` takes an optional value)
    ]
    try:
        return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        pytest.fail("the torchrun training hung")


@pytest.fixture(scope="module")
def ddp_run(tiny_run, tmp_path_factory):
    """One 2-process training run (2 epochs x 2 steps, evaluation after epoch 1 and at the end,
    a checkpoint after every step)."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = _config_file(tmp)
    over = _overrides(tiny_run, tmp / "run") + [
        "train.eval_period=1",
        "train.checkpoint_every_iters=1",
        "train.keep_checkpoints=5",
    ]
    res = _torchrun(cfg, over)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp, cfg, over


def test_ddp_run_writes_once_and_logs_the_per_process_batch(ddp_run, tiny_synthetic):
    tmp, _, _ = ddp_run
    run = tmp / "run"
    assert (run / "last.pth").is_file()
    # one checkpoint per step, no leftovers of concurrent writers
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        f"step_0000000{s}.pth" for s in (1, 2, 3, 4)
    ]
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == [
        "best.pth",
        "config.yaml",
        "last.pth",
        "log.txt",
        "metrics.json",
        "report.html",
        "train_log.csv",
    ]
    assert len((run / "train_log.csv").read_text().splitlines()) == 1 + 4  # header + 4 steps
    log = (run / "log.txt").read_text()
    # rank 0 alone writes the log: every step logged once, the run config logged once
    for step in ("epoch 1 iter 1/2", "epoch 1 iter 2/2", "epoch 2 iter 2/2"):
        assert log.count(step) == 1, step
    assert "2 processes (gloo" in log
    assert "global batch P=4 x K=2 = 8 images per step, each process P=2 x K=2 = 4 images" in log
    # the first step: each process 2 identities x 2 images, none shared, exactly the PK
    # sampler's global batches 0 and 1 (computed here independently of the trainer)
    ds = build_dataset("market1501", str(tiny_synthetic))
    pids = [int(it[1]) for it in ds.train]
    seen = []
    for r in range(WORLD):
        m = re.search(rf"first step, rank {r}: (\d+) images of (\d+) identities \[([\d, ]*)\]", log)
        assert m, log[-2000:]
        assert (int(m.group(1)), int(m.group(2))) == (4, 2)
        got = sorted(int(x) for x in m.group(3).split(","))
        sampler = PKSampler(pids, 2, 2, seed=0, num_replicas=WORLD, rank=r)
        sampler.set_epoch(0)
        expected = sorted({pids[i] for i in list(sampler)[:4]})
        assert got == expected
        seen.append(set(got))
    assert not seen[0] & seen[1]
    assert "first step: 0 identities shared between processes" in log


def test_ddp_evaluation_sees_every_image_once_in_order(ddp_run, tiny_synthetic):
    tmp, _, _ = ddp_run
    run = tmp / "run"
    ds = build_dataset("market1501", str(tiny_synthetic))
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["num_query"], metrics["num_gallery"]) == (len(ds.query), len(ds.gallery))
    # the gathered features are in the data set's order: a single process evaluating the
    # same checkpoint gets the same numbers
    single = evaluate_checkpoint(str(run / "last.pth"), out=str(tmp / "single"))
    for key in ("rank1", "rank5", "mAP", "mINP", "num_valid_queries"):
        assert metrics[key] == pytest.approx(single[key], abs=1e-6), key
    # the mid-run evaluation after epoch 1 ran on both processes too (and was logged once)
    log = (run / "log.txt").read_text()
    assert log.count("epoch 1  market1501: rank-1") == 1


def test_ddp_resume_matches_the_uninterrupted_run(tiny_run, ddp_run):
    """`--resume` under torchrun from the middle of epoch 2 (step 3 of 4), into another folder:
    the final weights equal the uninterrupted 2-process run's bit for bit."""
    tmp, cfg, _ = ddp_run
    run = tmp / "run"
    over = _overrides(tiny_run, tmp / "resumed") + ["train.eval_period=1"]
    res = _torchrun(cfg, over, "--resume", str(run / "checkpoints" / "step_00000003.pth"))
    assert res.returncode == 0, res.stderr[-3000:]
    log = (tmp / "resumed" / "log.txt").read_text()
    assert log.count("resumed from") == 1 and "at step 3 (epoch 2, 1 batches into it)" in log
    assert "epoch 2 iter 1/2" not in log and log.count("epoch 2 iter 2/2") == 1
    got = load_checkpoint(str(tmp / "resumed" / "last.pth"))
    ref = load_checkpoint(str(run / "last.pth"))
    assert got["train_state"]["step"] == ref["train_state"]["step"] == 4
    assert got["model"].keys() == ref["model"].keys()
    diff = [k for k in ref["model"] if not torch.equal(got["model"][k], ref["model"][k])]
    assert not diff, diff[:5]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_killed_process_stops_the_other_with_a_message(tiny_run, tmp_path):
    """Two processes started as torchrun starts them; rank 1 is killed mid-run; rank 0 must
    exit on its own, with the collective's failure in one error line, not hang."""
    run = tmp_path / "run"
    cfg = _config_file(tmp_path)
    over = _overrides(tiny_run, run) + ["schedule.epochs=100", "train.dist_timeout_s=10"]
    port = _free_port()
    procs = []
    for r in range(WORLD):
        env = _env()
        env.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(r),
            LOCAL_RANK=str(r),
            WORLD_SIZE=str(WORLD),
        )
        cmd = [sys.executable, "-m", "partreid", "train", "-c", str(cfg), *over]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    try:
        t0 = time.time()
        log = run / "log.txt"
        while not (log.is_file() and "epoch 1 iter 2/2" in log.read_text()):
            assert procs[0].poll() is None, procs[0].communicate()[1][-2000:]
            assert time.time() - t0 < 120, "the run did not start"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        try:
            _, err = procs[0].communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("rank 0 hung after rank 1 was killed")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode == 2, err[-2000:]
    assert "partreid train: error: rank 0/2:" in err, err[-2000:]
    assert "another process stopped or did not answer" in err
    assert "Traceback" not in err


def test_cached_images_and_device_augmentation_on_the_cpu(tiny_overrides, tmp_path):
    """train.cache_images + train.device_augment train on the CPU and resume bit-exactly
    (the device augmentation is seeded per process and step); CUDA-only switches are ignored
    with one log line."""
    fast = [
        "train.cache_images=true",
        "train.device_augment=true",
        "train.channels_last=true",
        "train.checkpoint_every_iters=1",
        "train.keep_checkpoints=5",
        "train.eval_period=0",
        "eval.num_visualize=0",
    ]
    torch.set_num_threads(1)
    a = load_config(None, tiny_overrides + fast + [f"output_dir={tmp_path / 'a'}"])
    train(a)
    log = (tmp_path / "a" / "log.txt").read_text()
    assert "image cache:" in log
    assert log.count("ignoring the CUDA-only switches train.amp, train.channels_last") == 1
    # resume from the step-1 checkpoint (middle of epoch 1) into another folder
    b = load_config(None, tiny_overrides + fast + [f"output_dir={tmp_path / 'b'}"])
    train(b, resume=str(tmp_path / "a" / "checkpoints" / "step_00000001.pth"))
    wa = load_checkpoint(str(tmp_path / "a" / "last.pth"))["model"]
    wb = load_checkpoint(str(tmp_path / "b" / "last.pth"))["model"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cached_images_with_the_per_image_transforms(tiny_overrides, tmp_path):
    """train.cache_images alone: the loader reads the uint8 cache, the transforms run per image."""
    torch.set_num_threads(1)
    cfg = load_config(
        None,
        tiny_overrides + ["train.cache_images=true", "schedule.epochs=1", "eval.num_visualize=0"],
    )
    metrics = train(cfg)
    assert metrics["num_query"] > 0
    assert "image cache:" in (Path(cfg.output_dir) / "log.txt").read_text()


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@CUDA
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_cuda_fast_path_trains(tiny_overrides, tmp_path, amp_dtype):
    """On a GPU: autocast (bf16, or fp16 with the GradScaler), channels_last, cudnn.benchmark,
    the uint8 cache and device augmentation together train with finite losses."""
    cfg = load_config(
        None,
        tiny_overrides
        + [
            "train.device=cuda",
            "train.amp=true",
            f"train.amp_dtype={amp_dtype}",
            "train.channels_last=true",
            "train.cudnn_benchmark=true",
            "train.cache_images=true",
            "train.device_augment=true",
            "train.log_period=1",
            "eval.num_visualize=0",
        ],
    )
    metrics = train(cfg)
    assert metrics["num_query"] > 0
    log = (Path(cfg.output_dir) / "log.txt").read_text()
    assert "ignoring the CUDA-only" not in log
    losses = [float(x) for x in re.findall(r"iter \d+/\d+  loss ([-\d.naif]+)", log)]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    state = load_checkpoint(str(Path(cfg.output_dir) / "last.pth"))["train_state"]
    assert bool(state["scaler"]) == (amp_dtype == "float16")  # a GradScaler only for fp16


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpu_ddp_run(tiny_run, tiny_synthetic, tmp_path):
    """torchrun on 2 GPUs (nccl) with SyncBatchNorm and the fast path runs to the end."""
    cfg = _config_file(tmp_path)
    over = _overrides(tiny_run, tmp_path / "run") + [
        "train.device=cuda",
        "train.sync_bn=true",
        "train.channels_last=true",
        "train.cache_images=true",
        "train.device_augment=true",
    ]
    res = _torchrun(cfg, over)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "2 processes (nccl" in log
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    ds = build_dataset("market1501", str(tiny_synthetic))
    assert (metrics["num_query"], metrics["num_gallery"]) == (len(ds.query), len(ds.gallery))


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_and_resumes(tiny_run, tmp_path):
    """A scheduler's SIGTERM to torchrun reaches both processes: they stop after the same step,
    rank 0 writes the checkpoint, and `--resume` under torchrun continues from it."""
    cfg = _config_file(tmp_path)
    run = tmp_path / "run"
    over = _overrides(tiny_run, run) + ["schedule.epochs=50"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd += [str(WORLD), "-m", "partreid", "train", "-c", str(cfg), *over]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while not ((run / "log.txt").is_file() and "iter 1/2" in (run / "log.txt").read_text()):
            assert proc.poll() is None and time.time() - t0 < 120, "the run did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = err.decode()
    stopped = re.findall(r"stopped by signal 15 after step (\d+)", err)
    assert len(stopped) == WORLD and len(set(stopped)) == 1, err[-3000:]
    saved = load_checkpoint(str(run / "last.pth"))["train_state"]["step"]
    assert saved == int(stopped[0])
    res = _torchrun(cfg, over[:-1] + [f"schedule.epochs={saved // 2 + 2}"], "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    log = (run / "log.txt").read_text()
    assert f"at step {saved}" in log
    assert load_checkpoint(str(run / "last.pth"))["train_state"]["step"] == 2 * (saved // 2 + 2)
