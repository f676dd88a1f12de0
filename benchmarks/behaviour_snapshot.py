"""What a refactor must not change, written to one folder so two trees can be diffed.

    python benchmarks/behaviour_snapshot.py OUT [--epochs 2]

Runs, through the public CLI and the public serve API only (so it runs on any tree):
the CLI parser dump (every command's options), a short demo (metrics), extract (features),
index + search (results), ingest of the demo videos into an embedded store, search --store by
tracklet and by image (results), store stats, store delete, and the OpenAPI schema of the gallery
server and of the store server. Compare two runs with

    python benchmarks/behaviour_snapshot.py --compare OUT_A OUT_B

(clock times, durations and the SQLite file size aside; every path is written relative to OUT).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np


def _load(path: str) -> dict:
    """A JSON file."""
    with open(path) as f:
        return json.load(f)


def _run(out: str, *args: str) -> str:
    """Run ``partreid ARGS`` in ``out``; its stdout with ``out`` made relative."""
    proc = subprocess.run(
        [sys.executable, "-m", "partreid", *args], cwd=out, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"partreid {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return _steady(proc.stdout.replace(os.path.abspath(out) + os.sep, ""))


def _steady(text: str) -> str:
    """Text without what changes from run to run: clock times, durations, rates."""
    text = re.sub(r"(?m)^\d\d:\d\d:\d\d ", "", text)
    text = re.sub(r"\d+(\.\d+)? ?(s|ms|img/s|crops/s)\b", "<t>", text)
    return re.sub(r"\(\d+(\.\d+)? MB", "(<MB>", text)


def _parser_dump(out: str) -> None:
    """Every command's options as argparse holds them."""
    from partreid.cli import build_parser

    def dump(p: argparse.ArgumentParser) -> dict:
        acts = []
        subs = {}
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                subs = {name: dump(sp) for name, sp in sorted(a.choices.items())}
                continue
            acts.append(
                {
                    "dest": a.dest,
                    "flags": list(a.option_strings),
                    "default": repr(a.default),
                    "choices": repr(a.choices),
                    "nargs": repr(a.nargs),
                    "type": getattr(a.type, "__name__", repr(a.type)),
                    "help": a.help,
                }
            )
        return {"prog": p.prog, "actions": acts, "commands": subs}

    with open(os.path.join(out, "parser.json"), "w") as f:
        json.dump(dump(build_parser()), f, indent=1, sort_keys=True)


def _openapi(out: str, ckpt: str, gallery: str, store: str) -> None:
    """The OpenAPI schemas of the gallery server and the store server."""
    from partreid.serve import build_worker, create_app
    from partreid.store import open_store

    os.chdir(out)
    worker = build_worker(ckpt, gallery, cache_dir=os.path.join(out, "cache"), num_workers=0)
    spec = create_app(worker).openapi()
    spec["info"]["description"] = spec["info"]["description"].replace(out, "OUT")
    with open(os.path.join(out, "openapi_gallery.json"), "w") as f:
        json.dump(spec, f, indent=1, sort_keys=True)
    qworker = build_worker(ckpt, None, cache_dir=os.path.join(out, "cache"), num_workers=0)
    with open_store(store) as st:
        spec = create_app(qworker, store=st, token="t" * 32).openapi()
    spec["info"]["description"] = spec["info"]["description"].replace(out, "OUT")
    with open(os.path.join(out, "openapi_store.json"), "w") as f:
        json.dump(spec, f, indent=1, sort_keys=True)


def _steady_json(x: object) -> object:
    """``x`` with :func:`_steady` applied to every string (and the SQLite file size left out)."""
    if isinstance(x, str):
        return re.sub(r'"disk_bytes": \d+', '"disk_bytes": <n>', _steady(x))
    if isinstance(x, list):
        return [_steady_json(v) for v in x]
    if isinstance(x, dict):
        return {k: _steady_json(v) for k, v in x.items()}
    return x


def compare(a: str, b: str) -> int:
    """Print what differs between two snapshots; returns the number of differing files."""
    import difflib

    bad = 0
    names = ["parser.json", "metrics.json", "results.json", "openapi_gallery.json"]
    for name in [*names, "openapi_store.json"]:
        ta = json.dumps(_steady_json(_load(os.path.join(a, name))), indent=1, sort_keys=True)
        tb = json.dumps(_steady_json(_load(os.path.join(b, name))), indent=1, sort_keys=True)
        diff = list(difflib.unified_diff(ta.splitlines(), tb.splitlines(), name, name, n=0))
        bad += bool(diff)
        print(f"{name}: {'identical' if not diff else f'{len(diff)} diff lines'}")
        for line in diff[:40]:
            print("   ", line[:300])
    fa, fb = (np.load(os.path.join(d, "features.npy")) for d in (a, b))
    same = fa.shape == fb.shape and np.array_equal(fa, fb)
    bad += not same
    print(f"features.npy: {'identical' if same else 'DIFFERENT'} {fa.shape}")
    return bad


def main() -> None:
    """Write the snapshot."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    if len(sys.argv) == 4 and sys.argv[1] == "--compare":
        raise SystemExit(1 if compare(sys.argv[2], sys.argv[3]) else 0)
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--reuse-demo", action="store_true", help="keep OUT/demo from an earlier run")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    timings = {}
    t = time.time()
    _parser_dump(out)
    if os.path.exists(os.path.join(out, "demo", "run", "last.pth")) and args.reuse_demo:
        with open(os.path.join(out, "demo_stdout.txt")) as f:
            demo_out = f.read()
    else:
        demo_out = _run(out, "demo", "--out", "demo", "--epochs", str(args.epochs))
        with open(os.path.join(out, "demo_stdout.txt"), "w") as f:
            f.write(demo_out)
    shutil.rmtree(os.path.join(out, "site"), ignore_errors=True)
    timings["demo"] = time.time() - t
    metrics = _load(os.path.join(out, "demo", "run", "metrics.json"))
    metrics.pop("demo_seconds", None)
    for k in list(metrics):
        if "time" in k or "seconds" in k:
            metrics.pop(k)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1, sort_keys=True)
    ckpt = "demo/run/last.pth"
    gallery = "demo/data/bounding_box_test"
    query = "demo/data/query"
    res = {"demo_summary": [ln for ln in demo_out.splitlines() if "finished in" not in ln]}
    _run(out, "extract", ckpt, gallery, "--out", "g.npz", "--no-progress", "--workers", "0")
    g = np.load(os.path.join(out, "g.npz"), allow_pickle=True)
    np.save(os.path.join(out, "features.npy"), g["features"])
    _run(out, "index", "g.npz", "--out", "g.index")
    res["search"] = _run(out, "search", "g.index", query, "--checkpoint", ckpt, "--topk", "5")
    for cam in ("1", "2"):
        _run(
            out,
            *("ingest", ckpt, f"demo/videos/cam{cam}.mkv", "--boxes", f"demo/videos/cam{cam}.txt"),
            *("--camera", cam, "--start-time", "2026-12-03T14:00:00", "--store", "site"),
        )
    res["stats"] = _run(out, "store", "stats", "site")
    res["stats_json"] = _run(out, "store", "stats", "site", "--json")
    res["by_tracklet"] = _run(out, "search", "--store", "site", "--tracklet", "1:1", "--topk", "5")
    res["by_tracklet_crops"] = _run(
        out, "search", "--store", "site", "--tracklet", "1:1", "--by", "crop", "--topk", "5"
    )
    first = os.path.join(query, sorted(os.listdir(os.path.join(out, query)))[0])
    res["by_image"] = _run(
        out,
        "search",
        "--store",
        "site",
        first,
        "--cameras",
        "2",
        "--after",
        "2026-12-03T14:00:01",
        "--topk",
        "5",
        "--out",
        "hits.json",
    )
    res["by_image_json"] = _load(os.path.join(out, "hits.json"))
    _openapi(out, ckpt, gallery, os.path.join(out, "site"))
    res["delete"] = _run(out, "store", "delete", "site", "--track", "2:1")
    res["stats_after"] = _run(out, "store", "stats", "site")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    with open(os.path.join(out, "timings.json"), "w") as f:
        json.dump(timings, f)
    print(f"snapshot in {out} (demo {timings['demo']:.0f} s)")


if __name__ == "__main__":
    main()
