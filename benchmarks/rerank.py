"""k-reciprocal re-ranking: partreid vs the classic dense numpy implementation.

Usage:
    python benchmarks/rerank.py                 # Market-1501-sized (3,368 + 15,913 items, 2048-d)
    python benchmarks/rerank.py --msmt          # also MSMT17-sized (11,659 + 82,161): partreid only
    python benchmarks/rerank.py --threads 1     # torch intra-op threads in the workers
    python benchmarks/rerank.py --methods re_rank_features,re_rank   # a subset (no reference)

Methods, each in a fresh subprocess that loads the same saved features:
  * ``reference``: torchreid 0.2.5's ``re_ranking`` (``torchreid/reid/utils/rerank.py`` loaded by
    file path; ``pip install --no-deps torchreid==0.2.5``) on the three distance matrices;
  * ``re_rank``: partreid's matrix interface on the same three matrices;
  * ``re_rank_features``: partreid straight from the features (no N x N matrix at all).
The distance matrices are computed with ``partreid.metrics.compute_distance`` in the worker
and timed separately.  Memory is reported two ways: the whole process's peak RSS (Python,
torch, the features and, for the matrix methods, the three distance matrices included), and
the peak RSS above the RSS right after the inputs are ready, i.e. the method's own memory (on
Linux the peak is reset there through ``/proc/self/clear_refs``; elsewhere the second figure
is measured against ``ru_maxrss`` and is an upper bound).  On the MSMT17-sized problem the
dense reference would need several N x N float32 arrays (N = 93,820: 35 GB each) and is not
run.  Timings on a shared machine are noisy.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_partreid_eval_speed", _HERE / "eval_speed.py")
eval_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_speed)


def run_worker(args: list, timeout: float = 7200) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (proc.stderr or proc.stdout)[-3000:]}


def _status_mb(key: str) -> float | None:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MB, or None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def worker(method: str, folder: Path, threads: int) -> dict:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from partreid.metrics import compute_distance, re_rank, re_rank_features

    qf, gf = np.load(folder / "qf.npy"), np.load(folder / "gf.npy")
    reference = (
        eval_speed.load_torchreid_module("utils/rerank.py") if method == "reference" else None
    )
    dist_seconds = 0.0
    if method in ("reference", "re_rank"):
        t0 = time.perf_counter()
        tq, tg = torch.from_numpy(qf), torch.from_numpy(gf)
        qg, qq, gg = (compute_distance(a, b).numpy() for a, b in ((tq, tg), (tq, tq), (tg, tg)))
        dist_seconds = time.perf_counter() - t0
    # inputs ready: whole-process peak so far, then the method's own peak above this point
    inputs_peak = eval_speed.rss_mb()
    inputs_rss = _status_mb("VmRSS") or inputs_peak
    exact_own = _reset_peak() and _status_mb("VmHWM") is not None
    t0 = time.perf_counter()
    if method == "reference":
        out = reference.re_ranking(qg, qq, gg, k1=20, k2=6, lambda_value=0.3)
    elif method == "re_rank":
        out = re_rank(qg, qq, gg, k1=20, k2=6, lambda_value=0.3)
    elif method == "re_rank_features":
        out = re_rank_features(qf, gf, k1=20, k2=6, lambda_value=0.3)
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - t0
    run_peak = _status_mb("VmHWM") if exact_own else eval_speed.rss_mb()
    np.save(folder / f"out_{method}.npy", np.asarray(out, dtype=np.float32))
    return {
        "method": method,
        "seconds": seconds,
        "dist_seconds": dist_seconds,
        "peak_rss_mb": max(inputs_peak, run_peak),
        "own_peak_mb": run_peak - inputs_rss,
        "inputs_rss_mb": inputs_rss,
        "own_exact": exact_own,
        "threads": torch.get_num_threads(),
    }


def bench(
    size: str, seed: int, threads: int, with_reference: bool, only: list | None = None
) -> None:
    cfg = eval_speed.SIZES[size]
    n = cfg["num_q"] + cfg["num_g"]
    print(
        f"\n== {size}-sized problem: {cfg['num_q']} queries + {cfg['num_g']} gallery (N = {n}), 2048-d, "
        f"seed {seed}, k1=20 k2=6 lambda=0.3"
    )
    with tempfile.TemporaryDirectory(prefix=f"partreid_rerank_{size}_") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        eval_speed.save_problem(folder, size, seed, with_distmat=False)
        print(f"data generated in {time.perf_counter() - t0:.1f}s")
        methods = ["re_rank_features"]
        if with_reference:
            if eval_speed.load_torchreid_module("utils/rerank.py") is None:
                print(
                    "reference: torchreid not installed (pip install --no-deps torchreid==0.2.5); skipped"
                )
            else:
                methods = ["re_rank_features", "re_rank", "reference"]
        else:
            print(
                f"reference: not run (dense N x N float32 = {n * n * 4 / 2**30:.0f} GiB per array)"
            )
        if only:
            methods = [m for m in methods if m in only]
        results = {}
        for method in methods:
            res = run_worker([method, str(folder), str(threads)])
            if "error" in res:
                print(f"{method}: FAILED\n{res['error']}")
                continue
            results[method] = res
            dist = (
                f" (+{res['dist_seconds']:.1f}s distance matrices)" if res["dist_seconds"] else ""
            )
            own = "" if res["own_exact"] else " (upper bound)"
            print(
                f"{method:>17}: {res['seconds']:8.1f} s{dist}  peak RSS {res['peak_rss_mb'] / 1024:6.2f} GiB "
                f"whole process (inputs ready at {res['inputs_rss_mb'] / 1024:.2f} GiB), "
                f"{res['own_peak_mb'] / 1024:5.2f} GiB above the inputs{own}  threads {res['threads']}"
            )
        if "reference" in results:
            ref = results["reference"]
            ref_out = np.load(folder / "out_reference.npy")
            for method in ("re_rank", "re_rank_features"):
                if method not in results:
                    continue
                r = results[method]
                diffs = np.abs(np.load(folder / f"out_{method}.npy") - ref_out)
                diff = diffs.max()
                n_off = int((diffs > 1e-4).sum())
                ref_total = ref["seconds"] + ref["dist_seconds"]
                own_total = r["seconds"] + r["dist_seconds"]
                print(
                    f"{method} vs reference: {ref['seconds'] / r['seconds']:.1f}x faster (re-ranking step), "
                    f"{ref_total / own_total:.1f}x (features -> re-ranked, distances included); peak RSS "
                    f"{r['peak_rss_mb'] / ref['peak_rss_mb']:.3f} of the reference's (whole process), "
                    f"{r['own_peak_mb'] / ref['own_peak_mb']:.3f} (above the inputs); "
                    f"max |difference| {diff:.2e}, {n_off} of {diffs.size} entries differ by > 1e-4"
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--msmt", action="store_true", help="also run the MSMT17-sized problem (partreid only)"
    )
    parser.add_argument(
        "--msmt-only", action="store_true", help="run only the MSMT17-sized problem"
    )
    parser.add_argument("--size", default="market", choices=sorted(eval_speed.SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads in the workers (0 = torch default)"
    )
    parser.add_argument(
        "--methods",
        default="",
        help="comma-separated subset of "
        "re_rank_features,re_rank,reference (default: all that apply)",
    )
    parser.add_argument(
        "--worker", nargs=3, metavar=("METHOD", "FOLDER", "THREADS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        method, folder, threads = args.worker
        print(json.dumps(worker(method, Path(folder), int(threads))))
        return
    import torch

    from partreid.metrics import rerank as rerank_module

    only = [m.strip() for m in args.methods.split(",") if m.strip()] or None
    bf16 = rerank_module._bf16_products_are_fast(torch.device("cpu"))
    print(
        f"python {sys.version.split()[0]}, torch {torch.__version__}, {os.cpu_count()} CPUs "
        f"(shared machine: timings are noisy); re_rank_features gallery blocks in "
        f"{'bfloat16 + float32 recheck' if bf16 else 'float32'}"
    )
    if not args.msmt_only:
        bench(args.size, args.seed, args.threads, with_reference=True, only=only)
    if args.msmt or args.msmt_only:
        bench("msmt", args.seed, args.threads, with_reference=False, only=only)


if __name__ == "__main__":
    main()
