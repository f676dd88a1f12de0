"""The one command to run on a GPU machine: CUDA tests, throughput table, short real-data training.

Sections, each in its own subprocess with its own time budget (the whole run stops within
``--budget-s``, default 480 s = 8 minutes, and prints whatever it has):

  (a) ``pytest tests/test_cuda.py``: evaluation, re-ranking and every model's forward/backward
      equal on CPU and CUDA; bf16 training steps finite;
  (b) ``benchmarks/train_throughput.py``: images/s and FLOP utilisation of bot, mgn, pcb, cgpn,
      rmgl (ResNet-50, 384x128), per speed-switch combination, synthetic vs device-augmented input;
  (c) a short same-schedule training of bot, mgn, cgpn and rmgl on the CUHK03-NP detected
      training split (100 identities carved out as validation, seed 0), ImageNet MobileNetV2,
      the papers' input size 384x128, with its results table.

What the GPU machine needs (it has no ../shared and no internet): this repository, installed
with ``pip install --no-deps -e .``, plus two things copied into a git-ignored folder of the
repository, e.g. ``runs/gpu_assets/`` (``/runs/`` is in .gitignore), named in the device tool's
``carry`` (about 40 MB)::

    mkdir -p runs/gpu_assets
    cp -r ../shared/data/cuhk03np-detected runs/gpu_assets/      # 7,365 images, 30 MB
    cp ../shared/weights/mobilenetv2_imagenet.pth runs/gpu_assets/  # 9 MB
    # device: carry ["runs/gpu_assets"], command:
    pip install --no-deps -e . -q && python benchmarks/gpu_check.py \\
        --data runs/gpu_assets/cuhk03np-detected --weights runs/gpu_assets/mobilenetv2_imagenet.pth

``--tiny`` runs everything CPU-sized (generated data, ResNet-18, a few steps): that is what the
test suite runs so that this script does not rot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]

# ---- the fast path for section (c) ------------------------------------------------------------
# The trainer reads these switches (engine/trainer.py; on the CPU, tiny mode, the CUDA-only
# ones are ignored with one log line). Not yet here, until checked on a GPU:
# "train.cache_images=true", "train.device_augment=true" (tests/engine/test_train_ddp.py -k cuda).
FASTPATH_OVERRIDES: List[str] = [
    "train.amp=true",
    "train.amp_dtype=bfloat16",
    "train.channels_last=true",
    "train.cudnn_benchmark=true",
]

TRAIN_MODELS = ["bot", "mgn", "cgpn", "rmgl"]


def _run(cmd: List[str], budget: float, env=None) -> dict:
    """Run ``cmd`` with a wall-clock ``budget``; return rc, output and seconds (never raises)."""
    t0 = time.perf_counter()
    if budget < 5:
        return {"rc": None, "out": "(skipped: no time left in the budget)", "seconds": 0.0}
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget, env=env)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out += f"\n(stopped after its budget of {budget:.0f} s)"
        rc = "timeout"
    return {"rc": rc, "out": out, "seconds": time.perf_counter() - t0}


def section_tests(budget: float, tiny: bool) -> dict:
    """(a) the CUDA tests."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/test_cuda.py",
        # the trainer's fast path (bf16 / fp16 + GradScaler, channels_last) and 2-GPU NCCL DDP
        "tests/engine/test_train_ddp.py::test_cuda_fast_path_trains",
        "tests/engine/test_train_ddp.py::test_two_gpu_ddp_run",
    ]
    if tiny:
        cmd += ["-k", "evaluation"]
    r = _run(cmd, budget)
    lines = [ln for ln in r["out"].splitlines() if ln.strip()]
    r["summary"] = lines[-1] if lines else "(no output)"
    return r


def section_throughput(budget: float, tiny: bool, device: str) -> dict:
    """(b) the throughput table."""
    cmd = [sys.executable, "benchmarks/train_throughput.py", "--device", device]
    if tiny:
        cmd += [
            "--models",
            "bot",
            "--backbone",
            "resnet18",
            "--height",
            "64",
            "--width",
            "32",
            "--batch",
            "8",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--inputs",
            "synthetic,device",
            "--combos",
            "fp32",
        ]
    else:
        # model-major order: every model gets its rows before the budget runs out
        cmd += [
            "--batch",
            "64",
            "--steps",
            "6",
            "--warmup",
            "3",
            "--inputs",
            "synthetic,device",
            "--combos",
            "fp32,bf16,bf16+cl+bench",
        ]
    cmd += ["--budget-s", str(max(0.0, budget - 30))]
    r = _run(cmd, budget)
    r["table"] = [
        ln for ln in r["out"].splitlines() if ln.startswith("|") or ln.startswith("device")
    ]
    return r


def section_training(
    budget: float, tiny: bool, data: Optional[str], weights: Optional[str], device: str, tmp: Path
) -> dict:
    """(c) short same-schedule training of bot, mgn, cgpn, rmgl on carved CUHK03-NP validation."""
    rows, logs = [], []
    models = ["bot"] if tiny else TRAIN_MODELS
    if tiny:
        from partreid.data import generate_synthetic

        data = str(tmp / "synthetic")
        generate_synthetic(
            data,
            num_ids=12,
            num_cams=2,
            images_per_id_per_cam=3,
            height=64,
            width=32,
            seed=0,
            num_distractors=2,
            num_junk=2,
        )
        common = [
            f"data.root={data}",
            "data.name=market1501",
            "model.backbone=resnet18",
            "model.pretrained=false",
            "input.height=64",
            "input.width=32",
            "sampler.p=4",
            "sampler.k=2",
            "schedule.epochs=1",
            "schedule.milestones=[1]",
            "schedule.warmup_epochs=0",
            "train.max_iters_per_epoch=2",
        ]
    else:
        common = [
            f"data.root={data}",
            f"model.pretrained={weights}",
            "input.height=384",
            "input.width=128",
            "schedule.epochs=6",
            "schedule.milestones=[5]",
            "train.max_iters_per_epoch=40",
            "sampler.p=16",
            "sampler.k=4",
            "optim.name=adam",
            "optim.lr=3.5e-4",
            "optim.weight_decay=5.0e-4",
            "optim.lr_mult={}",
            "schedule.warmup=linear",
            "schedule.warmup_epochs=1",
            "schedule.warmup_start_lr=3.5e-5",
            "train.amp=true",
        ]
    common += [
        "train.eval_period=0",
        "train.progress=false",
        "train.tensorboard=false",
        "eval.num_visualize=0",
        f"train.device={device}",
        f"sampler.num_workers={1 if tiny else 8}",
    ]
    common += FASTPATH_OVERRIDES
    start = time.perf_counter()
    for i, name in enumerate(models):
        left = budget - (time.perf_counter() - start)
        share = left / (len(models) - i)  # an equal share of what is left
        out_dir = tmp / "runs" / name
        over = common + [f"output_dir={out_dir}"]
        cmd = [
            sys.executable,
            "-m",
            "partreid",
            "train",
            "-c",
            f"configs/{name}/{'market1501' if tiny else 'cpu_mobilenet'}.yaml",
            *over,
        ]
        r = _run(cmd, share)
        logs.append(f"--- {name} (rc {r['rc']}, {r['seconds']:.0f} s)\n" + r["out"][-1500:])
        metrics = out_dir / "metrics.json"
        if r["rc"] == 0 and metrics.exists():
            m = json.loads(metrics.read_text())
            m = m.get("test", m) if isinstance(m.get("test"), dict) else m
            rows.append({"model": name, "seconds": r["seconds"], **m})
        else:
            rows.append({"model": name, "seconds": r["seconds"], "error": f"rc {r['rc']}"})
    return {"rows": rows, "log": "\n".join(logs), "overrides": common}


def _fmt(m: dict, key: str) -> str:
    v = m.get(key)
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "-"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", help="CUHK03-NP detected folder (with bounding_box_train/)")
    ap.add_argument("--weights", help="ImageNet MobileNetV2 state dict (mobilenetv2_imagenet.pth)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="total wall-clock budget")
    ap.add_argument("--sections", default="abc", help="which sections to run (subset of abc)")
    ap.add_argument("--tiny", action="store_true", help="CPU-sized smoke run (generated data)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="", help="also write the report to this Markdown file")
    args = ap.parse_args(argv)
    sections = set(args.sections)
    if not sections <= set("abc"):
        ap.error(f"--sections: expected letters from 'abc', got {args.sections!r}")
    if "c" in sections and not args.tiny:
        problems = []
        if not args.data or not (Path(args.data) / "bounding_box_train").is_dir():
            problems.append(
                f"--data {args.data!r}: expected the CUHK03-NP detected folder "
                "holding bounding_box_train/ (copy ../shared/data/cuhk03np-detected)"
            )
        if not args.weights or not Path(args.weights).is_file():
            problems.append(
                f"--weights {args.weights!r}: expected mobilenetv2_imagenet.pth "
                "(copy ../shared/weights/mobilenetv2_imagenet.pth)"
            )
        if problems:
            print("gpu_check: error: " + "; ".join(problems) + " (see --help)", file=sys.stderr)
            return 2
    import torch

    t_start = time.perf_counter()
    total = float(args.budget_s)
    # shares of the total budget: tests 20 %, throughput 35 %, training what is left
    shares = {"a": 0.2, "b": 0.35}
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device (CPU)"
    report = [f"# partreid gpu_check — {dev}; torch {torch.__version__}; budget {total:.0f} s", ""]

    def left() -> float:
        return total - (time.perf_counter() - t_start)

    env_note = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if env_note:
        report.append(f"CUDA_VISIBLE_DEVICES={env_note}")
    with tempfile.TemporaryDirectory(prefix="partreid_gpu_check_") as tmp:
        if "a" in sections:
            r = section_tests(min(shares["a"] * total, left()), args.tiny)
            report += [
                "## (a) CUDA tests (tests/test_cuda.py)",
                "",
                f"`{r['summary']}` ({r['seconds']:.0f} s)",
                "",
            ]
            if r["rc"] not in (0, 5):
                fails = [ln for ln in r["out"].splitlines() if ln.startswith(("FAILED", "ERROR"))]
                report += ["```", *(fails or r["out"].splitlines()[-30:]), "```", ""]
            print("\n".join(report[-6:]), flush=True)
        if "b" in sections:
            budget_b = min(
                shares["b"] * total, left() - (5 if "c" not in sections else 0.35 * left())
            )
            r = section_throughput(budget_b, args.tiny, args.device)
            report += [
                "## (b) training throughput",
                "",
                *r["table"],
                "",
                f"({r['seconds']:.0f} s, rc {r['rc']})",
                "",
            ]
            if r["rc"] != 0:
                report += ["```", *r["out"].splitlines()[-15:], "```", ""]
            print("\n".join(r["table"]), flush=True)
        if "c" in sections:
            r = section_training(
                left() - 5, args.tiny, args.data, args.weights, args.device, Path(tmp)
            )
            report += [
                "## (c) short training, CUHK03-NP (100 ids carved out as validation, seed 0)",
                "",
                "overrides: `" + " ".join(r["overrides"]) + "`",
                "",
                "| model | rank-1 % | rank-5 % | mAP % | mINP % | time s |",
                "|---|---|---|---|---|---|",
            ]
            for m in r["rows"]:
                if "error" in m:
                    report.append(
                        f"| {m['model']} | failed ({m['error']}) |||| {m['seconds']:.0f} |"
                    )
                else:
                    report.append(
                        f"| {m['model']} | {_fmt(m, 'rank1')} | {_fmt(m, 'rank5')} | "
                        f"{_fmt(m, 'mAP')} | {_fmt(m, 'mINP')} | {m['seconds']:.0f} |"
                    )
            if any("error" in m for m in r["rows"]):
                report += ["", "```", r["log"][-4000:], "```"]
            report.append("")
    report.append(f"total {time.perf_counter() - t_start:.0f} s of {total:.0f} s")
    text = "\n".join(report)
    print("\n" + text, flush=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
