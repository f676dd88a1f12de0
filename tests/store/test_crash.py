"""Crash safety of the embedded store: kill -9 while adding, reopen, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from partreid.store import CropBatch, open_store

BATCH, BATCHES, DIM = 200, 400, 256

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from partreid.store import CropBatch, open_store

    def batch(i):
        rng = np.random.default_rng(i)
        ids = np.arange(i * {B}, (i + 1) * {B})
        return CropBatch(ids=ids, features=rng.normal(size=({B}, {D})), camera=(ids // 4) % 5,
                         timestamp=ids.astype(float), track_id=ids // 4)

    st = open_store(sys.argv[1], create=True, info={{"dim": {D}}})
    for i in range({N}):
        st.add(batch(i))
        print(i, flush=True)
    """
).format(B=BATCH, D=DIM, N=BATCHES)


def batch(i: int) -> CropBatch:
    """The writer's batch i (same numbers)."""
    rng = np.random.default_rng(i)
    ids = np.arange(i * BATCH, (i + 1) * BATCH)
    return CropBatch(
        ids=ids,
        features=rng.normal(size=(BATCH, DIM)),
        camera=(ids // 4) % 5,
        timestamp=ids.astype(float),
        track_id=ids // 4,
    )


def test_kill_during_add_loses_at_most_the_open_batch(tmp_path):
    path = str(tmp_path / "store")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    last = -1
    for kill_after in (3, 9, 14):  # three kills at different moments, appending each time
        p = subprocess.Popen(
            [sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, env=env, text=True
        )
        seen = 0
        while seen < kill_after:
            line = p.stdout.readline()
            assert line, "the writer stopped early"
            last = max(last, int(line))
            seen += 1
        time.sleep(0.003 * kill_after)  # somewhere inside the next add
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        for line in p.stdout:  # batches committed before the kill landed
            last = max(last, int(line))
        p.stdout.close()
        with open_store(path) as st:
            s = st.stats()
            n = s.crops
            assert n % BATCH == 0 and n // BATCH - 1 >= last  # whole batches, every one reported
            present = st.contains(np.arange(BATCHES * BATCH))
            assert present[:n].all() and not present[n:].any()  # batches in order, none partial
            assert s.tracklets == n // 4
            size = os.path.getsize(os.path.join(path, "vectors.f32"))
            assert size == n * DIM * 4  # no row of an uncommitted batch left
            done = n // BATCH
            j = done - 1  # the last committed batch: its own vectors come back first
            q = batch(j).features[[0, BATCH - 1]]
            hits = st.search(q, 1)
            assert [h[0].id for h in hits] == [j * BATCH, (j + 1) * BATCH - 1]
            assert hits[0][0].distance < 1e-5
            # resume: add everything written so far and the open batch again
            for i in range(done + 1):
                assert st.add(batch(i)) == (BATCH if i == done else 0)
            assert st.stats().crops == (done + 1) * BATCH
    with open_store(path) as st:
        n = st.stats().crops
        assert st.contains(np.arange(n)).all()
        ids = [h.id for h in st.search(batch(0).features[:3], 2)[0]]
        assert ids[0] == 0 and len(set(ids)) == 2  # each crop exactly once
