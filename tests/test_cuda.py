"""CPU vs CUDA agreement and bf16 training; skipped where CUDA is absent (benchmarks/gpu_check.py
runs them on the GPU machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")

MODELS = ["bot", "mgn", "pcb", "cgpn", "rmgl"]
H, W = 128, 64


@pytest.fixture(autouse=True)
def exact_fp32():
    """Full float32 on the GPU (no TF32) so CPU and CUDA can be compared tightly."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def problem(seed=0, nq=300, ng=1500, dim=64):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, dim)).astype(np.float32)
    qp, gp = rng.integers(0, 60, nq), rng.integers(0, 60, ng)
    qf = centres[qp] + 0.8 * rng.standard_normal((nq, dim)).astype(np.float32)
    gf = centres[gp] + 0.8 * rng.standard_normal((ng, dim)).astype(np.float32)
    return qf, gf, qp, gp, rng.integers(0, 4, nq), rng.integers(0, 4, ng)


@pytest.mark.parametrize("quality", ["strong", "random"])
def test_evaluation_equal_on_cpu_and_cuda(quality):
    from partreid.metrics import compute_distance, evaluate_rank

    qf, gf, qp, gp, qc, gc = problem()
    if quality == "random":
        qf = np.random.default_rng(1).standard_normal(qf.shape).astype(np.float32)
    dist = compute_distance(torch.from_numpy(qf), torch.from_numpy(gf))
    dist_gpu = compute_distance(torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda())
    torch.testing.assert_close(dist_gpu.cpu(), dist, rtol=1e-4, atol=1e-3)
    # the same distance matrix ranked on either device gives identical metrics
    cpu = evaluate_rank(dist, qp, gp, qc, gc)
    gpu = evaluate_rank(dist.cuda(), qp, gp, qc, gc)
    np.testing.assert_array_equal(cpu["cmc"], gpu["cmc"])
    assert cpu["mAP"] == pytest.approx(gpu["mAP"], abs=1e-12)
    assert cpu["mINP"] == pytest.approx(gpu["mINP"], abs=1e-12)


def test_reranking_equal_on_cpu_and_cuda():
    from partreid.metrics import re_rank_features

    qf, gf, *_ = problem(nq=120, ng=500)
    cpu = np.asarray(re_rank_features(qf, gf, device="cpu"))
    gpu = re_rank_features(torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda())
    gpu = gpu.cpu().numpy() if isinstance(gpu, torch.Tensor) else np.asarray(gpu)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4)


def _build(name):
    from partreid.models import build_model

    torch.manual_seed(0)
    return build_model(name, num_classes=10, backbone="resnet18", pretrained=False)


def _loss(out):
    ts = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            ts.append(x.float().pow(2).mean())
        elif isinstance(x, dict):
            [walk(v) for v in x.values()]
        elif isinstance(x, (list, tuple)):
            [walk(v) for v in x]

    walk(out)
    return sum(ts)


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_backward_equal_on_cpu_and_cuda(name):
    x = torch.randn(4, 3, H, W, generator=torch.Generator().manual_seed(0))
    cpu_model, gpu_model = _build(name), _build(name).cuda()
    cpu_model.eval(), gpu_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(gpu_model(x.cuda()).cpu(), cpu_model(x), rtol=1e-3, atol=1e-3)
    cpu_model.train(), gpu_model.train()
    _loss(cpu_model(x)).backward()
    _loss(gpu_model(x.cuda())).backward()
    for (n, pc), (_, pg) in zip(cpu_model.named_parameters(), gpu_model.named_parameters()):
        if pc.grad is None:
            assert pg.grad is None, n
            continue
        scale = pc.grad.abs().max().clamp(min=1e-6)
        err = (pg.grad.cpu() - pc.grad).abs().max() / scale
        assert err < 1e-2, f"{name}.{n}: relative gradient difference {err:.2e}"


@pytest.mark.parametrize("name", MODELS)
def test_bf16_training_steps_are_finite(name):
    from partreid.config import load_config
    from partreid.engine.speed import precision
    from partreid.losses import LossComputer

    cfg = load_config(f"configs/{name}/market1501.yaml", ["train.amp=true"])
    prec = precision(cfg.train, torch.device("cuda"))
    assert prec.enabled and prec.dtype == torch.bfloat16
    model = _build(name).cuda().train()
    crit = LossComputer(cfg.losses)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(16, 3, H, W, generator=g).cuda()
        t = (torch.arange(16) // 4).cuda()
        with prec.autocast(torch.device("cuda")):
            loss, _ = crit(model(x), t)
        assert torch.isfinite(loss), f"{name}: loss {loss}"
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
