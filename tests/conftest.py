"""Project-wide fixtures: a tiny generated data set, a tiny training config, a checkpoint and a
Milvus server for the session."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from partreid.checkpoint import model_meta, save_checkpoint
from partreid.config import load_config
from partreid.models import build_model
from partreid.store import CropBatch


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A small synthetic Market-layout data set (12 identities, 64x32 images)."""
    from partreid.data import generate_synthetic

    root = tmp_path_factory.mktemp("tiny_synthetic")
    generate_synthetic(
        root,
        num_ids=16,
        test_fraction=0.5,
        num_cams=2,
        images_per_id_per_cam=3,
        height=64,
        width=32,
        num_distractors=4,
        num_junk=2,
        seed=1,
    )
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_synthetic):
    """``tiny_run(out)``: ``key=value`` overrides for a seconds-long CPU training run on
    ``tiny_synthetic`` that writes to ``out``."""

    def overrides(out) -> list:
        return [
            f"data.root={tiny_synthetic}",
            "data.name=market1501",
            f"output_dir={out}",
            "input.height=64",
            "input.width=32",
            "sampler.p=4",
            "sampler.k=2",
            "sampler.num_workers=0",
            "model.name=bot",
            "model.backbone=resnet18",
            "model.pretrained=false",
            "optim.lr=0.01",
            "schedule.epochs=2",
            "schedule.milestones=[1]",
            "train.max_iters_per_epoch=2",
            "train.progress=false",
            "train.tensorboard=false",
            "eval.num_visualize=2",
            "eval.batch_size=32",
        ]

    return overrides


@pytest.fixture
def tiny_overrides(tiny_run, tmp_path):
    """``tiny_run`` writing to ``tmp_path / "run"``."""
    return tiny_run(tmp_path / "run")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests run tiny models: one intra-op thread is as fast and avoids thread contention on
    shared 2-core machines (where 2 threads were several times slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _reset_partreid_logger():
    """Each test starts with the library logger as imported: a run's ``setup_logging`` (console +
    log.txt handlers, no propagation) must not hide later tests' records from ``caplog``."""
    import logging

    yield
    log = logging.getLogger("partreid")
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.propagate = True


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """A resnet18 BoT (random weights, 64 x 32 input, eval.distance=cosine) checkpoint."""
    path = tmp_path_factory.mktemp("ckpt") / "bot.pth"
    cfg = load_config(
        None,
        [
            "model.name=bot",
            "model.backbone=resnet18",
            "model.pretrained=false",
            "input.height=64",
            "input.width=32",
            "eval.distance=cosine",
        ],
    )
    torch.manual_seed(0)
    model = build_model("bot", 5, backbone="resnet18", pretrained=False)
    save_checkpoint(str(path), model.state_dict(), model_meta(cfg, model, 5))
    return str(path)


@pytest.fixture
def write_video():
    """``write(path, frames, rate=5)``: RGB uint8 frames as a lossless FFV1 video (the decoded
    frames are the frames); skips the test without PyAV."""
    av = pytest.importorskip("av")

    def write(path, frames, rate=5):
        with av.open(str(path), "w") as out:
            stream = out.add_stream("ffv1", rate=rate)
            stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
            stream.pix_fmt = "bgr0"
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)

    return write


MILVUS_PASSWORD = PASSWORD = "pw-of-the-tests-7f3a"  # the session server's root password


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A Milvus server (the ``milvus`` wheel, :class:`partreid.store.milvus_server.LocalMilvus`)
    on 127.0.0.1 with authorization on (root / :data:`MILVUS_PASSWORD`), shared by the session
    and stopped at its end; tests using it skip, with the reason, where it cannot start."""
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    pytest.importorskip("milvus", reason="the milvus-server extra is not installed")
    from partreid.store.milvus_server import LocalMilvus

    # shorter control loops than a production server (the same code paths, shorter waits):
    # loading a collection ~0.5 s instead of ~2.5 s, a read after a write ~0.1 s, not ~0.3 s
    fast = {
        "queryCoord.checkInterval": 100,
        "queryCoord.distPullInterval": 100,
        "proxy.timeTickInterval": 50,
    }
    srv = LocalMilvus(
        str(tmp_path_factory.mktemp("milvus_server")), auth=True, config=fast, password=PASSWORD
    )
    try:
        srv.start(timeout=120)
    except Exception as e:  # no server here: say why, once per test that wanted it
        pytest.skip(f"the Milvus server did not start: {e}")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def milvus_server_uri(milvus_server) -> str:
    """``milvus://root:PASSWORD@127.0.0.1:PORT`` of the session's server: add ``/collection``
    (a name of its own per test: the server is shared)."""
    return milvus_server.uri().rsplit("/", 1)[0]


@pytest.fixture
def milvus_collections(milvus_server_uri, request):
    """``name(base)``: a collection prefix on the session's server unique to this test (its
    collections are dropped after the test)."""
    import itertools
    import re

    stem = re.sub(r"\W", "_", request.node.name)[:40]
    made = []
    counter = itertools.count()

    def name(base: str = "site") -> str:
        made.append(f"t{next(counter)}_{base}_{stem}_{os.getpid()}")
        return made[-1]

    yield name
    if made:
        import pymilvus

        port = milvus_server_uri.rsplit(":", 1)[1]
        c = pymilvus.MilvusClient(uri=f"http://127.0.0.1:{port}", token=f"root:{PASSWORD}")
        for coll in c.list_collections():
            if any(coll.startswith(p + "_") for p in made):
                c.drop_collection(coll)
        c.close()


def _site_crops(
    seed: int = 0, people: int = 8, cameras: int = 3, id0: int = 0, dim: int = 16
) -> CropBatch:
    """Crops of ``people`` walking through ``cameras``: 2-4 tracks each, one after the other
    (10-30 s between), 3 crops a track one second apart; features: the person's direction
    plus a little noise; ``pid`` the person."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, dim))
    rows = []
    track = {c: 0 for c in range(1, cameras + 1)}
    for p in range(people):
        t = 1000.0 + float(rng.integers(0, 100))
        for _ in range(int(rng.integers(2, 5))):
            cam = int(rng.integers(1, cameras + 1))
            track[cam] += 1
            for j in range(3):
                rows.append((p, cam, track[cam], t + j))
            t += 3 + float(rng.integers(10, 30))
    pid = np.array([r[0] for r in rows])
    n = len(rows)
    return CropBatch(
        ids=np.arange(id0, id0 + n),
        features=centres[pid] + 0.05 * rng.normal(size=(n, dim)),
        camera=np.array([r[1] for r in rows]),
        timestamp=np.array([r[3] for r in rows]),
        track_id=np.array([r[2] for r in rows]),
        path=[f"p{r[0]}.jpg" for r in rows],
        pid=pid,
    )


@pytest.fixture
def site_crops():
    """``site_crops(seed, people, cameras)``: crops of people walking through a site (16-d
    features, ``pid`` the person) for the site identity tests."""
    return _site_crops
