"""Train several configs under one schedule on real data and print one results table.

The default is the CPU check on this repository's development data: the ImageNet MobileNetV2
(../shared/weights) trained on the CUHK03-NP detected training split with 100 identities
carved out as validation (one query per identity and camera, seed 0)::

    python benchmarks/real_data.py configs/bot/cpu_mobilenet.yaml configs/cgpn/cpu_mobilenet.yaml \
        --epochs 10 --out runs/bench

Every config gets the same overrides (epochs, output folder, any ``key=value`` given after
``--``), so the table compares models under one schedule. Figures printed: rank-1/5, mAP, mINP,
training images/s (mean over logged steps), training and evaluation time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PARTREID_SHARED", ROOT.parent / "shared"))


def mean_rate(run: Path) -> float:
    with open(run / "train_log.csv") as f:
        rates = [float(r["img_per_s"]) for r in csv.DictReader(f)]
    return sum(rates) / max(len(rates), 1)


def evaluate_variant(row: dict, label: str, overrides: list, out: str) -> dict:
    """Evaluate the trained model of ``row`` again with ``overrides`` (e.g. test-time ABP)."""
    from partreid.engine import EvalTarget
    from partreid.engine.eval_run import evaluate_run
    from partreid.engine.setup import load_data
    from partreid.inference import load_trained

    run = f"{out}/{row['model']}"
    over = overrides + [f"output_dir={run}", "train.progress=false"]
    t0 = time.time()
    cfg, model, device = load_trained(f"{run}/last.pth", row["config"], over)
    m = evaluate_run(EvalTarget(cfg, model, load_data(cfg), device))
    return {
        "model": label,
        "config": f"{row['config']} (trained as {row['model']}) {overrides[-1]}",
        "rank1": m["rank1"],
        "rank5": m["rank5"],
        "mAP": m["mAP"],
        "mINP": m["mINP"],
        "feature_dim": m["feature_dim"],
        "train_img_per_s": float("nan"),
        "total_seconds": time.time() - t0,
        "epochs": row["epochs"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("configs", nargs="+", help="config files (name=path to label a row)")
    ap.add_argument("--epochs", type=int, default=None, help="override schedule.epochs for all")
    ap.add_argument("--out", default="runs/bench", help="folder for the runs and results.json")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for all")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0 = torch's default); 1 is faster when another job shares the cores",
    )
    ap.add_argument(
        "--eval-variant",
        action="append",
        default=[],
        metavar="ROW:LABEL:KEY=VALUE",
        help="also evaluate the trained model of ROW with KEY=VALUE changed (e.g. "
        "rp_rsa:+ABP:model.abp=true), as a row of its own",
    )
    args = ap.parse_args()
    if not (SHARED / "data").is_dir():
        print(f"shared data not found at {SHARED}/data; set PARTREID_SHARED", file=sys.stderr)
        return 2

    from partreid.config import load_config
    from partreid.engine import train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # configs name ../shared relative to the repository root
    rows = []
    for spec in args.configs:
        label, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).parent.name, "", spec)
        label = label or Path(path).stem
        over = list(args.set) + [f"output_dir={args.out}/{label}", "train.progress=false"]
        if args.epochs:
            over.append(f"schedule.epochs={args.epochs}")
        cfg = load_config(path, over)
        t0 = time.time()
        m = train(cfg)
        rows.append(
            {
                "model": label,
                "config": path,
                "rank1": m["rank1"],
                "rank5": m["rank5"],
                "mAP": m["mAP"],
                "mINP": m["mINP"],
                "feature_dim": m["feature_dim"],
                "train_img_per_s": mean_rate(Path(cfg.output_dir)),
                "total_seconds": time.time() - t0,
                "epochs": cfg.schedule.epochs,
            }
        )
        with open(Path(args.out) / "results.json", "w") as f:
            json.dump(rows, f, indent=2)
    for spec in args.eval_variant:
        base, label, kv = spec.split(":", 2)
        row = next(r for r in rows if r["model"] == base)
        rows.append(evaluate_variant(row, label, list(args.set) + [kv], args.out))
        with open(Path(args.out) / "results.json", "w") as f:
            json.dump(rows, f, indent=2)
    print()
    print("| model | rank-1 % | rank-5 % | mAP % | mINP % | dim | train img/s | time s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {100 * r['rank1']:.1f} | {100 * r['rank5']:.1f} | "
            f"{100 * r['mAP']:.1f} | {100 * r['mINP']:.1f} | {r['feature_dim']} | "
            f"{r['train_img_per_s']:.1f} | {r['total_seconds']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
