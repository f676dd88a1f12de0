"""Evaluation speed: partreid.metrics.evaluate_rank vs a reference, on synthetic Re-ID-sized problems.

Usage:
    python benchmarks/eval_speed.py                 # Market-1501-sized (3,368 x 15,913)
    git show REV:src/partreid/metrics/rank.py > /tmp/rank_before.py
    python benchmarks/eval_speed.py --versus /tmp/rank_before.py --threads 1
                                   # before/after on strong, half-trained and random features
    python benchmarks/eval_speed.py --msmt          # also MSMT17-sized (11,659 x 82,161)

The reference is torchreid 0.2.5's Python evaluation (``torchreid/reid/metrics/rank.py``,
loaded by file path so that OpenCV etc. are not imported) when torchreid is installed
(``pip install --no-deps torchreid==0.2.5``), otherwise a plain per-query implementation.
Each method runs in a fresh subprocess that loads the same saved inputs; peak memory is that
process's ``ru_maxrss`` (and the increase over the RSS right after loading the inputs).
Timings on a shared machine are noisy.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {
    # queries, gallery, identities, cameras, gallery distractors (pid 0), junk (pid -1)
    "tiny": dict(num_q=300, num_g=2000, num_ids=100, num_cams=6, distractors=200, junk=300),
    "market": dict(num_q=3368, num_g=15913, num_ids=750, num_cams=6, distractors=2798, junk=3819),
    "msmt": dict(num_q=11659, num_g=82161, num_ids=3060, num_cams=15, distractors=0, junk=0),
}


# ----------------------------------------------------------------------------- synthetic data
# identity-centre scale per difficulty: "strong" resembles a well-trained model on Market-1501
# (mAP ~0.85), "half" a half-trained one (many gallery items before the hardest true match),
# "random" carries no identity information at all (the hardest case for evaluate_rank)
DIFFICULTY = {"strong": 0.45, "half": 0.38, "random": 0.0}


def make_problem(size: str, seed: int = 0, dim: int = 2048, difficulty: str = "strong"):
    """Features and ids shaped like the data set's test split (identity centres + noise)."""
    cfg = SIZES[size]
    scale = DIFFICULTY[difficulty]
    rng = np.random.default_rng(seed)
    num_q, num_g, num_ids, num_cams = cfg["num_q"], cfg["num_g"], cfg["num_ids"], cfg["num_cams"]
    # scales chosen so that the difficulty resembles a strong trained model on Market-1501
    # (mAP ~0.85, rank-1 ~0.97, mINP ~0.45); easier or harder data changes evaluate_rank's time
    centres = scale * rng.standard_normal((num_ids, dim), dtype=np.float32)
    cam_bias = 0.3 * rng.standard_normal((num_cams, dim), dtype=np.float32)
    q_pids = rng.integers(1, num_ids + 1, num_q)
    n_other = cfg["distractors"] + cfg["junk"]
    g_pids = np.concatenate(
        [
            rng.integers(1, num_ids + 1, num_g - n_other),
            np.zeros(cfg["distractors"], np.int64),
            np.full(cfg["junk"], -1),
        ]
    )
    q_cams, g_cams = rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)

    def feats(pids, cams):
        out = np.empty((len(pids), dim), np.float32)
        for a in range(0, len(pids), 4096):
            p, c = pids[a : a + 4096], cams[a : a + 4096]
            f = rng.standard_normal((len(p), dim), dtype=np.float32) + cam_bias[c]
            known = p > 0
            f[known] += centres[p[known] - 1]
            # distractors (0) and junk (-1) are other people: each gets a centre of its own
            f[~known] += scale * rng.standard_normal((int((~known).sum()), dim), dtype=np.float32)
            out[a : a + 4096] = f
        return out

    return feats(q_pids, q_cams), feats(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams


def save_problem(
    folder: Path, size: str, seed: int, with_distmat: bool, difficulty: str = "strong"
) -> None:
    import torch

    qf, gf, qp, gp, qc, gc = make_problem(size, seed, difficulty=difficulty)
    for name, arr in dict(qf=qf, gf=gf, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc).items():
        np.save(folder / f"{name}.npy", arr)
    if with_distmat:
        from partreid.metrics import compute_distance

        dist = compute_distance(torch.from_numpy(qf), torch.from_numpy(gf)).numpy()
        np.save(folder / "distmat.npy", dist)


def load_torchreid_module(relpath: str):
    """A module of an installed torchreid, loaded by file path (``import torchreid`` pulls in OpenCV)."""
    spec = importlib.util.find_spec("torchreid")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    for cand in (root / relpath, root / "reid" / relpath):
        if cand.exists():
            mod_spec = importlib.util.spec_from_file_location(f"_torchreid_{cand.stem}", cand)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
            return module
    return None


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(args: list, timeout: float = 3600) -> dict:
    """Run one measurement in a fresh interpreter and return its JSON result."""
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (proc.stderr or proc.stdout)[-2000:]}


# ----------------------------------------------------------------------------- methods
def plain_per_query(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Straightforward per-query evaluation (the fallback reference)."""
    cmcs, aps = [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        same = g_pids[order] == q_pids[i]
        keep = ~(same & (g_camids[order] == q_camids[i]))
        hits = same[keep]
        if not hits.any():
            continue
        cum = np.cumsum(hits)
        cmcs.append((cum[:max_rank] >= 1).astype(np.float64))
        aps.append(((cum / np.arange(1, len(hits) + 1)) * hits).sum() / hits.sum())
    return np.mean(cmcs, 0), float(np.mean(aps))


def worker(method: str, folder: Path, queries: int, threads: int = 0) -> dict:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    load = {
        n: np.load(folder / f"{n}.npy")
        for n in ("distmat", "q_pids", "g_pids", "q_camids", "g_camids")
    }
    if queries:
        for n in ("distmat", "q_pids", "q_camids"):
            load[n] = np.ascontiguousarray(load[n][:queries])
    from partreid.metrics import evaluate_rank

    rank = load_torchreid_module("metrics/rank.py") if method == "torchreid_py" else None
    base = rss_mb()
    args = (load["distmat"], load["q_pids"], load["g_pids"], load["q_camids"], load["g_camids"])
    t0 = time.perf_counter()
    if method == "partreid":
        out = evaluate_rank(*args, max_rank=50)
        cmc, mAP = out["cmc"], out["mAP"]
    elif method.startswith("versus="):  # this partreid against an earlier rank.py, one process
        return versus(Path(method.split("=", 1)[1]), args)
    elif method == "torchreid_py":
        cmc, mAP = rank.evaluate_py(*args, 50, False)
    elif method == "plain":
        cmc, mAP = plain_per_query(*args)
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - t0
    return {
        "method": method,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": rss_mb(),
        "inputs_rss_mb": base,
        "mAP": float(mAP),
        "rank1": float(cmc[0]),
        "rank5": float(cmc[4]),
        "cmc": [float(c) for c in cmc[:20]],
    }


def load_rank_file(path: Path):
    """An earlier ``partreid/metrics/rank.py`` (e.g. from ``git show REV:...``), as a module."""
    import partreid.metrics  # noqa: F401  (its relative imports resolve inside this package)

    spec = importlib.util.spec_from_file_location("partreid.metrics._rank_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def versus(baseline: Path, args: tuple, rounds: int = 2) -> dict:
    """Time the current evaluate_rank and a baseline file's, interleaved in this one process."""
    from partreid.metrics import evaluate_rank

    old = load_rank_file(baseline).evaluate_rank
    best = {"before": float("inf"), "after": float("inf")}
    cpu = dict(best)  # process CPU seconds: less inflated than wall time on a shared machine
    outs = {}
    for _ in range(rounds):
        for label, fn in (("before", old), ("after", evaluate_rank)):
            t0, c0 = time.perf_counter(), time.process_time()
            outs[label] = fn(*args, max_rank=50)
            best[label] = min(best[label], time.perf_counter() - t0)
            cpu[label] = min(cpu[label], time.process_time() - c0)
    a, b = outs["after"], outs["before"]
    return {
        "method": "versus",
        "before_s": best["before"],
        "after_s": best["after"],
        "before_cpu_s": cpu["before"],
        "after_cpu_s": cpu["after"],
        "mAP": a["mAP"],
        "rank1": float(a["cmc"][0]),
        "mINP": a["mINP"],
        "max_abs_diff": max(
            float(np.abs(a["cmc"] - b["cmc"]).max()),
            abs(a["mAP"] - b["mAP"]),
            abs(a["mINP"] - b["mINP"]),
        ),
    }


def sweep(size: str, seed: int, baseline: Path, difficulties: list, threads: int) -> None:
    """evaluate_rank before (``baseline`` file) / after on strong, half-trained and random features."""
    cfg = SIZES[size]
    print(f"\n== difficulty sweep, {size}-sized ({cfg['num_q']} x {cfg['num_g']}), 2048-d")
    print(f"baseline: {baseline}; best of 2 interleaved runs per version, one process each")
    print(
        "| features | mAP | rank-1 | mINP | before s (CPU s) | after s (CPU s) | speed-up "
        "| max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for diff in difficulties:
        with tempfile.TemporaryDirectory(prefix=f"partreid_eval_{diff}_") as tmp:
            folder = Path(tmp)
            save_problem(folder, size, seed, with_distmat=True, difficulty=diff)
            r = run_worker([f"versus={baseline}", str(folder), "0", str(threads)])
        if "error" in r:
            print(f"| {diff} | FAILED: {r['error'][-300:]} |")
            continue
        print(
            f"| {diff} | {r['mAP']:.3f} | {r['rank1']:.3f} | {r['mINP']:.3f} | "
            f"{r['before_s']:.3f} ({r['before_cpu_s']:.3f}) | "
            f"{r['after_s']:.3f} ({r['after_cpu_s']:.3f}) | {r['before_s'] / r['after_s']:.1f}x | "
            f"{r['max_abs_diff']:.1e} |",
            flush=True,
        )


# ----------------------------------------------------------------------------- driver
def bench(size: str, seed: int, ref_queries: int | None, threads: int = 0) -> None:
    cfg = SIZES[size]
    print(
        f"\n== {size}-sized problem: {cfg['num_q']} queries x {cfg['num_g']} gallery, 2048-d, seed {seed}"
    )
    with tempfile.TemporaryDirectory(prefix=f"partreid_eval_{size}_") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        save_problem(folder, size, seed, with_distmat=True)
        print(f"data generated in {time.perf_counter() - t0:.1f}s")
        ref = "torchreid_py" if load_torchreid_module("metrics/rank.py") is not None else "plain"
        results = {}
        for method in ("partreid", ref):
            nq = ref_queries if (method != "partreid" and ref_queries) else 0
            res = run_worker([method, str(folder), str(nq), str(threads)])
            if "error" in res:
                print(f"{method}: FAILED\n{res['error']}")
                continue
            if nq:  # per-query loop: time scales with the number of queries
                res["measured_seconds"], res["measured_queries"] = res["seconds"], nq
                res["seconds"] = res["seconds"] * cfg["num_q"] / nq
            results[method] = res
            extra = (
                f" (measured {res['measured_seconds']:.2f}s on {nq} queries, scaled)" if nq else ""
            )
            print(
                f"{method:>13}: {res['seconds']:9.3f} s{extra}  threads {res['threads']}  peak RSS {res['peak_rss_mb']:8.0f} MB "
                f"(+{res['peak_rss_mb'] - res['inputs_rss_mb']:.0f} MB over inputs)  "
                f"mAP {res['mAP']:.6f}  R1 {res['rank1']:.6f}"
            )
        if "partreid" in results and ref in results:
            p, r = results["partreid"], results[ref]
            print(
                f"speed-up vs {ref}: {r['seconds'] / p['seconds']:.1f}x;  "
                f"extra memory over inputs: partreid {p['peak_rss_mb'] - p['inputs_rss_mb']:.0f} MB, "
                f"{ref} {r['peak_rss_mb'] - r['inputs_rss_mb']:.0f} MB"
            )
            if not ref_queries:
                print(
                    f"max |CMC difference| (first 20 ranks) {np.abs(np.subtract(p['cmc'], r['cmc'])).max():.2e}, "
                    f"|mAP difference| {abs(p['mAP'] - r['mAP']):.2e}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--msmt", action="store_true", help="also run the MSMT17-sized problem")
    parser.add_argument(
        "--msmt-only", action="store_true", help="run only the MSMT17-sized problem"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--size",
        default="market",
        choices=sorted(SIZES),
        help="first problem size (default market)",
    )
    parser.add_argument(
        "--msmt-reference-queries",
        type=int,
        default=1000,
        help="run the reference on this many MSMT queries and scale its time (0 = all)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads for partreid (0 = torch default); the machine may be shared",
    )
    parser.add_argument(
        "--worker",
        nargs=4,
        metavar=("METHOD", "FOLDER", "QUERIES", "THREADS"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--versus",
        type=Path,
        help="difficulty sweep against an earlier rank.py, e.g. made with "
        "`git show REV:src/partreid/metrics/rank.py > /tmp/rank_before.py`",
    )
    parser.add_argument(
        "--difficulty",
        default="strong,half,random",
        help="comma-separated feature qualities for --versus (strong, half, random)",
    )
    args = parser.parse_args()
    if args.versus:
        diffs = [d.strip() for d in args.difficulty.split(",") if d.strip()]
        unknown = [d for d in diffs if d not in DIFFICULTY]
        if unknown:
            parser.error(f"--difficulty: unknown {unknown}; valid: {sorted(DIFFICULTY)}")
        if not args.versus.is_file():
            parser.error(f"--versus: {args.versus} is not a file")
        sweep(args.size, args.seed, args.versus, diffs, args.threads)
        return
    if args.worker:
        method, folder, queries, threads = args.worker
        print(json.dumps(worker(method, Path(folder), int(queries), int(threads))))
        return
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs (shared machine: timings are noisy)"
    )
    if not args.msmt_only:
        bench(args.size, args.seed, None, args.threads)
    if args.msmt or args.msmt_only:
        bench("msmt", args.seed, args.msmt_reference_queries or None, args.threads)


if __name__ == "__main__":
    main()
