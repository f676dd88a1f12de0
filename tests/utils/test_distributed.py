"""engine.distributed on the CPU with gloo: 2 real processes started like torchrun starts them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from partreid.data.sampler import PKSampler
from partreid.utils import distributed as D

WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    import torch
    from partreid.utils import distributed as D
    from partreid.utils.distributed import DistributedError

    scenario, out, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    torch.set_num_threads(1)
    info = D.init_distributed("cpu", timeout_s=timeout)
    assert (info.rank, info.world_size) == (D.rank(), D.world_size()) and info.backend == "gloo"
    try:
        if scenario == "gather":
            from partreid.config import EvalConfig
            from partreid.data import build_dataset
            from partreid.data.transforms import build_test_transform
            from partreid.engine.evaluator import evaluate, extract_features_sharded
            sys.path.insert(0, os.path.dirname(__file__))
            from _dist_model import tiny_model

            ds = build_dataset("market1501", os.environ["DATA_ROOT"])
            items = ds.query + ds.gallery
            model = tiny_model()
            tf = build_test_transform(64, 32)
            res = {"is_main": D.is_main()}
            for n in (len(items), 7, 1):  # odd sizes; fewer items than processes
                f, pids, cams = extract_features_sharded(
                    model, items[:n], tf, torch.device("cpu"), batch_size=4, num_workers=0
                )
                lo, hi = D.shard_bounds(n)
                idx = D.gather_in_order(torch.arange(lo, hi), n)
                res[n] = {"f": f, "pids": pids, "cams": cams, "idx": idx, "shard": (lo, hi)}
            cfg = EvalConfig(batch_size=4, num_visualize=0)
            res["metrics"], _ = evaluate(
                model, ds.query, ds.gallery, tf, cfg, torch.device("cpu"), 0
            )
            torch.save(res, f"{out}/rank{info.rank}.pt")
            D.barrier()
        elif scenario in ("dies", "stalls"):
            if info.rank == 1:
                if scenario == "dies":
                    os._exit(3)
                time.sleep(4 * timeout + 20)
                sys.exit(0)
            t0 = time.time()
            D.all_gather_rows(torch.ones(3, 2))
            print("UNEXPECTED: the collective returned")
    except DistributedError as exc:
        print(f"partreid: error: {exc}", file=sys.stderr, flush=True)
        os._exit(2)
    D.cleanup()
    """
)

MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    def tiny_model():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d((4, 2)), nn.Flatten(),
        ).eval()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path: Path, scenario: str, timeout: float, env_extra=None, world: int = 2):
    """Start ``world`` worker processes with torchrun's environment; return them (running)."""
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "_dist_model.py").write_text(MODEL)
    port = free_port()
    procs = []
    for r in range(world):
        env = dict(os.environ)
        env.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(r),
            LOCAL_RANK=str(r),
            WORLD_SIZE=str(world),
            OMP_NUM_THREADS="1",
            **(env_extra or {}),
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(tmp_path / "worker.py"),
                    scenario,
                    str(tmp_path),
                    str(timeout),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def finish(procs, limit: float = 120):
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a distributed worker hung (no timeout fired)")
        outs.append((p.returncode, out, err))
    return outs


# ----------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_bounds_cover_every_item_once(world):
    for n in range(0, 12):
        blocks = [D.shard_bounds(n, r, world) for r in range(world)]
        flat = [i for lo, hi in blocks for i in range(lo, hi)]
        assert flat == list(range(n))
        sizes = [hi - lo for lo, hi in blocks]
        assert max(sizes) - min(sizes) <= 1


def test_single_process_helpers_are_identity():
    assert (D.rank(), D.world_size(), D.is_main(), D.is_distributed()) == (0, 1, True, False)
    t = torch.arange(6).view(3, 2)
    assert D.all_gather_rows(t)[0] is t and D.gather_in_order(t, 3) is t
    with pytest.raises(ValueError, match="expected 5 rows"):
        D.gather_in_order(t, 5)
    model = torch.nn.BatchNorm1d(3)
    assert (
        D.convert_sync_batchnorm(model) is model and D.wrap_ddp(model, torch.device("cpu")) is model
    )
    assert D.process_seed(7, 0) == 7 and D.process_seed(7, 1) != D.process_seed(7, 0)
    info = D.init_distributed("cpu")
    assert info.world_size == 1 and info.backend is None and info.is_main


def test_env_errors_are_clear(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK < WORLD_SIZE"):
        D.env_world()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        D.init_distributed("cpu")
    with pytest.raises(ValueError, match="divisible"):
        D.per_process_pk(6, 4, world=4)
    assert D.per_process_pk(16, 4, world=4) == (4, 4)


@pytest.mark.parametrize("world", [2, 4])
def test_processes_see_different_identities_every_step(world):
    """Global P x K split with per_process_pk: at every step the ranks' identities are disjoint,
    each rank gets P/world x K, and the union over ranks is a global batch of P identities."""
    rng = np.random.default_rng(0)
    pids = rng.integers(0, 60, 900)
    p_local, k = D.per_process_pk(8, 4, world)
    for epoch in (0, 1):
        per_rank = []
        for r in range(world):
            s = PKSampler(pids, p_local, k, seed=3, num_replicas=world, rank=r)
            s.set_epoch(epoch)
            per_rank.append(np.asarray(list(s)).reshape(-1, p_local * k))
        steps = {len(b) for b in per_rank}
        assert len(steps) == 1 and steps.pop() > 0
        for step in range(len(per_rank[0])):
            ids = [set(pids[b[step]].tolist()) for b in per_rank]
            assert all(len(x) == p_local for x in ids)
            assert len(set().union(*ids)) == p_local * world  # disjoint across ranks


# ----------------------------------------------------------------------------- 2 processes
def test_sharded_extraction_equals_single_process(tmp_path, tiny_synthetic):
    from partreid.config import EvalConfig
    from partreid.data import build_dataset
    from partreid.data.loader import build_test_loader
    from partreid.data.transforms import build_test_transform
    from partreid.engine.evaluator import evaluate, extract_features

    results = finish(launch(tmp_path, "gather", 60.0, {"DATA_ROOT": str(tiny_synthetic)}))
    for code, _out, err in results:
        assert code == 0, err[-3000:]

    sys.path.insert(0, str(tmp_path))
    try:
        from _dist_model import tiny_model
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("_dist_model", None)
    ds = build_dataset("market1501", tiny_synthetic)
    items = ds.query + ds.gallery
    model = tiny_model()
    tf = build_test_transform(64, 32)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [g["is_main"] for g in got] == [True, False]
    for n in (len(items), 7, 1):
        loader = build_test_loader(items[:n], tf, batch_size=4, num_workers=0)
        ref_f, ref_p, ref_c = extract_features(model, loader, torch.device("cpu"))
        assert got[0][n]["shard"][1] == got[1][n]["shard"][0]  # contiguous, disjoint blocks
        for g in got:  # every process holds every image's feature, once, in the original order
            g = g[n]
            assert torch.equal(g["idx"], torch.arange(n))
            assert g["f"].shape == ref_f.shape
            torch.testing.assert_close(g["f"], ref_f, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(g["pids"], ref_p)
            np.testing.assert_array_equal(g["cams"], ref_c)
    ref_m, _ = evaluate(
        model,
        ds.query,
        ds.gallery,
        tf,
        EvalConfig(batch_size=4, num_visualize=0),
        torch.device("cpu"),
        0,
    )
    for g in got:
        for key in ("rank1", "rank5", "mAP", "mINP", "num_query", "num_gallery"):
            assert g["metrics"][key] == pytest.approx(ref_m[key], abs=1e-6), key


@pytest.mark.parametrize("scenario", ["dies", pytest.param("stalls", marks=pytest.mark.slow)])
def test_failed_peer_stops_the_other_with_a_message(tmp_path, scenario):
    timeout = 4.0
    procs = launch(tmp_path, scenario, timeout)
    code, out, err = finish(procs[:1], limit=90)[0]
    for p in procs[1:]:
        p.kill()
        p.communicate()
    assert "UNEXPECTED" not in out
    assert code == 2, (code, out, err[-2000:])
    assert "collective all_gather failed" in err and "rank 0/2" in err, err[-2000:]
