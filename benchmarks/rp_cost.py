"""Training throughput of a branch with and without the receptive-partition (RP) path.

Measures images/s of full training steps (forward, loss, backward, SGD step) of RMGL's 2-stripe
single-branch model with ``rp=False`` and ``rp=True``, interleaved in one process on the same
batches so that machine load affects both alike. Prints the figures and their ratio::

    python benchmarks/rp_cost.py --backbone mobilenet_v2 --height 128 --width 64 --batch 32
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--stripes", type=int, nargs="+", default=[2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    from partreid.losses import LossComputer
    from partreid.models import build_model

    dev = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.height, args.width, device=dev)
    y = torch.arange(args.batch, device=dev) // 4
    loss_fn = LossComputer(
        [
            {"type": "cross_entropy", "output": "logits"},
            {"type": "triplet", "output": "triplet", "margin": 0.6},
        ]
    )
    models = {}
    for rp in (False, True):
        m = (
            build_model(
                "rmgl",
                args.batch // 4,
                backbone=args.backbone,
                stripes=args.stripes,
                rp=rp,
                abp=False,
            )
            .to(dev)
            .train()
        )
        models[rp] = (m, torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9))
    times = {False: 0.0, True: 0.0}

    def step(rp):
        m, opt = models[rp]
        loss, _ = loss_fn(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for rp in (False, True):  # warm-up
        step(rp)
    for _ in range(args.rounds):
        for rp in (False, True):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            step(rp)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[rp] += time.perf_counter() - t
    n = args.rounds * args.batch
    base, rp = n / times[False], n / times[True]
    print(
        f"backbone {args.backbone}, input {args.height}x{args.width}, batch {args.batch}, "
        f"stripes {args.stripes}, device {dev}, {torch.get_num_threads()} threads"
    )
    print(f"original path only : {base:8.1f} img/s")
    print(f"original + RP path : {rp:8.1f} img/s")
    print(f"RP costs {100 * (1 - rp / base):.0f}% of the throughput (ratio {rp / base:.2f})")


if __name__ == "__main__":
    main()
