"""Training throughput (images/s) and model FLOP utilisation per model and speed-switch combination.

Each row times full training steps (forward, the recipe's losses, backward, SGD step) of one
model from ``configs/<model>/market1501.yaml`` (backbone, input size and batch overridable), for
one combination of the ``train:`` speed switches, with one of three inputs:

* ``synthetic`` -- a random float batch already on the device (the model alone);
* ``device``    -- uint8 images from the in-memory cache, copied to the device and augmented
                   there by ``DeviceAugment`` with the recipe's transforms (``train.cache_images``
                   + ``train.device_augment``);
* ``loader``    -- the per-image pipeline: JPEG decoding and PIL transforms in DataLoader
                   workers (``--workers``), on a generated synthetic data set.

FLOPs per image are counted once per model with ``torch.utils.flop_counter.FlopCounterMode``
over one forward + backward (matmuls/convolutions; elementwise work is not counted), and the
utilisation is achieved FLOP/s over the device's peak (a table for H100 / H200 / A100 dense
bf16 and fp32, or ``--peak-tflops``).  On the CPU it prints achieved TFLOP/s only.

    python benchmarks/train_throughput.py                                   # GPU: paper sizes
    python benchmarks/train_throughput.py --backbone resnet18 --height 128 --width 64 \\
        --batch 16 --steps 3                                                # CPU smoke run

Nothing is asserted; timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]

# dense peak TFLOP/s (no sparsity): (bf16 tensor cores, fp32 without TF32)
PEAKS = {
    "H200": (989.0, 67.0),
    "H100": (989.0, 67.0),  # SXM; the PCIe card is lower (756 / 51): use --peak-tflops
    "A100": (312.0, 19.5),
}

# switch combinations: name -> (amp, channels_last, cudnn_benchmark, compile)
COMBOS = {
    "fp32": (False, False, False, False),
    "fp32+cl": (False, True, False, False),
    "bf16": (True, False, False, False),
    "bf16+cl": (True, True, False, False),
    "bf16+cl+bench": (True, True, True, False),
    "bf16+cl+bench+compile": (True, True, True, True),
}


def peak_tflops(device: torch.device, amp: bool, override: Optional[float]) -> Optional[float]:
    """The device's dense peak for the step's precision (None when unknown, e.g. the CPU)."""
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (bf16, fp32) in PEAKS.items():
        if key in name:
            return bf16 if amp else fp32
    return None


def _tensors(x) -> List[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    return []


def build(name: str, args, device: torch.device):
    """(config, model, criterion, optimizer) for ``name``'s Market-1501 recipe at the given sizes."""
    from partreid.config import load_config
    from partreid.engine.setup import model_kwargs
    from partreid.losses import LossComputer
    from partreid.models import build_model

    cfg = load_config(
        str(ROOT / "configs" / name / "market1501.yaml"),
        [
            f"input.height={args.height}",
            f"input.width={args.width}",
            f"model.backbone={args.backbone}",
            "model.pretrained=false",
        ],
    )
    torch.manual_seed(0)
    model = build_model(name, num_classes=args.classes, **model_kwargs(cfg))
    criterion = LossComputer(cfg.losses)
    return cfg, model, criterion


def count_flops(model, criterion, batch: torch.Tensor, targets: torch.Tensor) -> float:
    """FLOPs of one forward + backward (FlopCounterMode), per image."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        loss, _ = criterion(model(batch), targets)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch.shape[0]


def make_targets(batch: int, p_ids: int, device) -> torch.Tensor:
    k = max(1, batch // p_ids)
    return torch.arange(batch, device=device) // k % p_ids


class Inputs:
    """Yields (float batch on device, targets) for one input mode."""

    def __init__(self, mode: str, cfg, args, device, data_root: Optional[Path]):
        self.mode, self.device, self.batch = mode, device, args.batch
        self.targets = make_targets(args.batch, args.classes, device)
        h, w = cfg.input.height, cfg.input.width
        if mode == "synthetic":
            g = torch.Generator(device="cpu").manual_seed(0)
            self.x = torch.randn(args.batch, 3, h, w, generator=g).to(device)
        elif mode == "device":
            from partreid.data.device_augment import DeviceAugment

            g = torch.Generator(device="cpu").manual_seed(0)
            n = max(4 * args.batch, 256)
            self.cache = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
            if device.type == "cuda":
                self.cache = self.cache.pin_memory()
            self.aug = DeviceAugment(
                cfg.transforms, h, w, cfg.input.mean, cfg.input.std, train=True
            )
            self.gen = torch.Generator().manual_seed(1)
        elif mode == "loader":
            from partreid.data import build_dataset
            from partreid.data.loader import build_train_loader
            from partreid.data.transforms import build_transforms

            ds = build_dataset("market1501", str(data_root))
            tf = build_transforms(cfg.transforms, h, w, True, cfg.input.mean, cfg.input.std)
            k = 4
            self.loader = build_train_loader(
                ds.train,
                tf,
                max(1, args.batch // k),
                k,
                num_workers=args.workers,
                pin_memory=device.type == "cuda",
            )
            self.it = None
        else:
            raise ValueError(f"unknown input mode {mode!r}")

    def next(self, channels_last: bool):
        if self.mode == "synthetic":
            x, t = self.x, self.targets
        elif self.mode == "device":
            idx = torch.randint(0, self.cache.shape[0], (self.batch,), generator=self.gen)
            u8 = self.cache.index_select(0, idx).to(self.device, non_blocking=True)
            x, t = self.aug(u8), self.targets
        else:
            if self.it is None:
                self.it = iter(self.loader)
            try:
                imgs, pids, _, _ = next(self.it)
            except StopIteration:
                self.it = iter(self.loader)
                imgs, pids, _, _ = next(self.it)
            x = imgs.to(self.device, non_blocking=True)
            t = (pids % self.targets.max().add(1)).to(self.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, t


def run_row(name, combo, mode, args, device, data_root, flops_cache) -> Dict:
    """Time ``args.steps`` training steps after ``args.warmup`` untimed ones."""
    from partreid.engine.speed import precision, prepare_model

    amp, cl, bench, comp = COMBOS[combo]
    cfg, model, criterion = build(name, args, device)
    cfg.train.amp, cfg.train.amp_dtype = amp, "bfloat16"
    cfg.train.channels_last, cfg.train.cudnn_benchmark = cl, bench
    prec = precision(cfg.train, device)
    model = prepare_model(model, cfg.train, device, compile_model=False)
    if name not in flops_cache:
        x = torch.randn(min(args.batch, 8), 3, cfg.input.height, cfg.input.width, device=device)
        flops_cache[name] = count_flops(model, criterion, x, make_targets(x.shape[0], 4, device))
    step_model = torch.compile(model) if comp else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    inputs = Inputs(mode, cfg, args, device, data_root)
    model.train()

    def step():
        x, t = inputs.next(cl)
        with prec.autocast(device):
            loss, _ = criterion(step_model(x), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / args.steps
    ips = args.batch / seconds
    tflops = flops_cache[name] * ips / 1e12
    peak = peak_tflops(device, prec.enabled, args.peak_tflops)
    return {
        "model": name,
        "input": mode,
        "switches": combo if device.type == "cuda" else combo.replace("bf16", "fp32(cpu)"),
        "img_s": ips,
        "step_ms": 1000 * seconds,
        "gflop_img": flops_cache[name] / 1e9,
        "tflops": tflops,
        "mfu": None if peak is None else tflops / peak,
    }


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="bot,mgn,pcb,cgpn,rmgl")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--height", type=int, default=384)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64, help="images per step (P x K)")
    ap.add_argument(
        "--classes", type=int, default=751, help="training identities (classifier size)"
    )
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per row")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--combos", default="", help=f"comma-separated subset of {list(COMBOS)}")
    ap.add_argument("--inputs", default="synthetic,device,loader", help="input modes to time")
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers for 'loader'")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak (TFLOP/s)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--budget-s", type=float, default=0.0, help="stop adding rows after this")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from partreid.utils.device import resolve_device

    device = resolve_device(args.device)
    if args.combos:
        combos = [c.strip() for c in args.combos.split(",") if c.strip()]
    elif device.type == "cuda":
        combos = ["fp32", "bf16", "bf16+cl", "bf16+cl+bench"]
    else:
        combos = ["fp32", "fp32+cl"]  # autocast is CUDA-only in partreid
    bad = [c for c in combos if c not in COMBOS]
    if bad:
        ap.error(f"--combos: unknown {bad}; valid: {list(COMBOS)}")
    modes = [m.strip() for m in args.inputs.split(",") if m.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device {dev_name}; {args.backbone} {args.height}x{args.width}, batch {args.batch}, "
        f"{args.steps} timed steps after {args.warmup}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads",
        flush=True,
    )
    rows: List[Dict] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="partreid_tput_") as tmp:
        data_root = None
        if "loader" in modes:
            from partreid.data import generate_synthetic

            data_root = Path(tmp) / "data"
            generate_synthetic(
                data_root,
                num_ids=max(8, args.batch // 4 * 2),
                num_cams=2,
                images_per_id_per_cam=4,
                height=args.height,
                width=args.width,
                seed=0,
            )
        print("| model | input | switches | img/s | step ms | GFLOP/img | TFLOP/s | MFU |")
        print("|---|---|---|---|---|---|---|---|", flush=True)
        flops: Dict[str, float] = {}
        for name in models:
            for combo in combos:
                for mode in modes:
                    if args.budget_s and time.perf_counter() - start > args.budget_s:
                        print(
                            f"(time budget {args.budget_s:.0f} s reached: remaining rows skipped)"
                        )
                        return rows
                    try:
                        r = run_row(name, combo, mode, args, device, data_root, flops)
                    except Exception as exc:  # noqa: BLE001 - one failed row must not end the table
                        print(
                            f"| {name} | {mode} | {combo} | FAILED: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120]} |||||",
                            flush=True,
                        )
                        continue
                    rows.append(r)
                    mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
                    print(
                        f"| {r['model']} | {r['input']} | {r['switches']} | {r['img_s']:.1f} | "
                        f"{r['step_ms']:.1f} | {r['gflop_img']:.2f} | {r['tflops']:.3f} | {mfu} |",
                        flush=True,
                    )
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
