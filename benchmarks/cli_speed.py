"""How fast the quick commands answer: ``partreid --help``, ``partreid list`` and
``partreid store stats STORE``, each run as the console script and as ``python -m partreid``.

    python benchmarks/cli_speed.py               # 7 runs of each, interleaved
    python benchmarks/cli_speed.py --repeat 15

Every run is a fresh process (what a user waits for: interpreter start, imports, the answer).
The store is a small embedded store (200 crops of 64-d numpy features, 4 cameras) made in a
temporary folder with :mod:`partreid.store`. ``python -c pass`` (the floor),
``python -c "import numpy"`` (most of what ``store stats`` adds to it) and
``python -c "import torch"`` (what a command costs once it imports torch) are measured in the
same run, interleaved with the commands, so that the figures share the machine's load. The
partreid imported is this checkout's (``src/`` first on ``PYTHONPATH``); the console script is
the one installed beside this interpreter (``--script`` to name another). Prints the median,
minimum and maximum wall time of each and whether the median is under the 0.5 s goal. Nothing
is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import numpy as np

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "src"))
sys.path.insert(0, SRC)

from partreid.store import CropBatch, open_store  # noqa: E402

GOAL_S = 0.5


def make_store(folder: str, n: int = 200, dim: int = 64) -> str:
    """A small embedded store of ``n`` crops (random unit features, 4 cameras, tracks of 10)."""
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n, dim)).astype(np.float32)
    uri = os.path.join(folder, "site")
    with open_store(uri, create=True, info={"dim": dim, "model": {"name": "bot"}}) as st:
        st.add(
            CropBatch(
                ids=np.arange(n),
                features=feats,
                camera=np.arange(n) % 4 + 1,
                timestamp=1.7e9 + np.arange(n, dtype=np.float64),
                track_id=np.arange(n) // 10,
            )
        )
    return uri


def commands(script: str, store: str) -> List[Tuple[str, List[str], bool]]:
    """``(label, argv, held to the goal?)`` of everything timed."""
    py = sys.executable
    runs = [
        ("python -c pass", [py, "-c", "pass"], False),
        ('python -c "import numpy"', [py, "-c", "import numpy"], False),
        ('python -c "import torch"', [py, "-c", "import torch"], False),
    ]
    for label, args in (
        ("--help", ["--help"]),
        ("list", ["list"]),
        ("store stats STORE", ["store", "stats", store]),
    ):
        runs.append((f"partreid {label}", [script, *args], True))
        runs.append((f"python -m partreid {label}", [py, "-m", "partreid", *args], True))
    return runs


def time_once(argv: List[str], env: Dict[str, str]) -> float:
    """Wall seconds of one fresh process; fails loudly if the command fails."""
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, timeout=300)
    return time.perf_counter() - t


def main() -> None:
    """Time each command ``--repeat`` times, interleaved, and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=7, help="runs of each command (default 7)")
    ap.add_argument(
        "--script",
        default=os.path.join(os.path.dirname(sys.executable), "partreid"),
        help="the partreid console script (default: the one beside this interpreter)",
    )
    args = ap.parse_args()
    if not os.path.exists(args.script):
        args.script = shutil.which("partreid") or sys.exit(f"no console script {args.script}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory(prefix="partreid_cli_speed_") as tmp:
        runs = commands(args.script, make_store(tmp))
        times: Dict[str, List[float]] = {label: [] for label, _, _ in runs}
        for _label, argv, _ in runs:  # once each first: warm the file cache, catch failures
            time_once(argv, env)
        for _ in range(args.repeat):
            for label, argv, _ in runs:
                times[label].append(time_once(argv, env))
    print(f"{args.repeat} fresh processes each (interleaved); goal: median < {GOAL_S} s")
    print(f"console script: {args.script}")
    print(f"{'command':<40} {'median':>8} {'min':>8} {'max':>8}  goal")
    for label, _, held in runs:
        t = times[label]
        verdict = ("ok" if statistics.median(t) < GOAL_S else "OVER") if held else "-"
        print(
            f"{label:<40} {statistics.median(t):>7.3f}s {min(t):>7.3f}s {max(t):>7.3f}s  {verdict}"
        )


if __name__ == "__main__":
    main()
