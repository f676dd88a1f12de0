"""BoxMOT's tests (test_trackers.py) in a pytest process of their own: once BoxMOT is imported,
forked DataLoader workers later in the same process (the resume tests) die with SIGSEGV, which
takes the whole test run down. Run alone, the module behaves; this test runs it so."""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_boxmot_tests_pass_in_their_own_process():
    env = {**os.environ, "PARTREID_BOXMOT_PROCESS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-m", "not slow"]
    cmd += ["--import-mode=importlib", "-p", "no:cacheprovider", "-rs"]
    proc = subprocess.run(
        [*cmd, os.path.join(HERE, "test_trackers.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout or " skipped" in proc.stdout, proc.stdout[-2000:]
