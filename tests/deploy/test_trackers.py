"""BoxMOT as a client of partreid's exports: BoxMOT's own ReID runtime on the files agrees with
the AppearanceEmbedder (also for a model with its own normalisation), its OpenVINO backend needs
the sidecar the export writes, a BoxMOT tracker runs with a partreid model, and the MOT rows
BoxMOT writes go into a store with ``partreid ingest --boxes`` as they are. Skipped without the
``trackers`` extra."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from partreid.cli import main
from partreid.data.datasets.synthetic_video import camera_background, generate_videos
from partreid.data.io import list_image_files
from partreid.data.sources import read_mot_boxes
from partreid.data.transforms import build_test_transform
from partreid.deploy.trackers import (
    BoxmotError,
    boxmot_agreement,
    boxmot_quiet_no_installs,
    boxmot_reid,
    write_sidecar,
)
from partreid.inference import AppearanceEmbedder, Extractor, load_model
from partreid.store import open_store

if os.environ.get("PARTREID_BOXMOT_PROCESS") != "1":
    pytest.skip(
        "runs in a process of its own (test_trackers_process.py): after BoxMOT is imported, the "
        "resume test's forked loader workers later in the same pytest process crash it (SIGSEGV)",
        allow_module_level=True,
    )
boxmot = pytest.importorskip("boxmot", reason="BoxMOT is the trackers extra")
pytest.importorskip("onnxruntime")


def _cos(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def scene(tiny_synthetic):
    """A 320 x 240 RGB frame of camera 1's scene with four test crops pasted in at 1.5 to 3
    times their size, and their boxes (x1, y1, x2, y2)."""
    frame = Image.fromarray(camera_background(str(tiny_synthetic), 1, 320, 240))
    paths = list_image_files(os.path.join(tiny_synthetic, "bounding_box_test"))[0][::7][:4]
    boxes = []
    for i, (path, scale) in enumerate(zip(paths, (1.5, 2.0, 2.5, 3.0))):
        crop = Image.open(path).convert("RGB")
        w, h = int(crop.width * scale), int(crop.height * scale)
        x, y = 10 + 78 * i, 230 - h
        frame.paste(crop.resize((w, h), Image.BILINEAR), (x, y))
        boxes.append([x, y, x + w, y + h])
    return np.asarray(frame), np.array(boxes, np.float32)


def test_export_prints_boxmot_agreement_and_writes_the_sidecar(exports):
    path, code, printed = exports("onnx")
    assert code == 0
    m = re.search(r"BoxMOT \S+ runs .* mean cosine ([\d.]+), min ([\d.]+)", printed)
    assert m and float(m.group(2)) > 0.99, printed
    with open(path + ".metadata.json") as f:
        side = json.load(f)
    assert side["model_kwargs"]["img_size"] == [64, 32] and side["preprocess"] == "resize"


def test_boxmot_runtime_agrees_with_the_embedder(exports, own_norm_ckpt, scene):
    path = exports("onnx")[0]
    rgb, boxes = scene
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    with boxmot_quiet_no_installs() as wanted:
        theirs = boxmot_reid(path, wanted)(bgr, boxes=boxes)
    ours = AppearanceEmbedder(path, channels="bgr")(bgr, boxes)
    truth = AppearanceEmbedder(own_norm_ckpt, channels="bgr")(bgr, boxes)  # PyTorch
    err_ours, err_truth = 1 - _cos(theirs, ours), 1 - _cos(theirs, truth)
    assert err_ours.max() < 1e-3 and err_truth.max() < 1e-3  # OpenCV's resize against PIL's
    pairs = 1 - (truth @ truth.T)[np.triu_indices(len(boxes), 1)]
    assert pairs.min() > 10 * err_truth.max()  # far below the difference between two people
    # the model fed BoxMOT's ImageNet-normalised crops as they are (no renormalising layer)
    unadapted = Extractor(load_model(own_norm_ckpt), device="cpu", num_workers=0)
    unadapted.transform = build_test_transform(64, 32)
    wrong = AppearanceEmbedder(unadapted, channels="bgr")(bgr, boxes)
    assert (1 - _cos(theirs, wrong)).mean() > 10 * err_truth.mean()


def test_boxmot_openvino_needs_the_sidecar(exports, scene, tmp_path):
    src = exports("openvino")[0]
    xml = str(tmp_path / "bare.xml")
    shutil.copy(src, xml)
    shutil.copy(src[:-4] + ".bin", xml[:-4] + ".bin")
    rgb, boxes = scene
    crops = [rgb[int(y0) : int(y1), int(x0) : int(x1)] for x0, y0, x1, y1 in boxes]
    with pytest.raises(BoxmotError) as err:
        boxmot_agreement(xml, crops)  # BoxMOT's default 256 x 128 crops: OpenVINO refuses
    assert f"cannot run {xml}" in str(err.value) and "\n" not in str(err.value)
    write_sidecar(xml, Extractor(xml).info)
    r = boxmot_agreement(xml, crops)
    assert r["input_size"] == (64, 32) and r["min_cos"] > 0.99 and not r["refused_installs"]
    assert r["min_cos_same_resize"] > 0.9999  # all the rest is OpenCV's resize against PIL's


def test_a_boxmot_tracker_with_a_partreid_model_feeds_ingest(exports, tiny_synthetic, tmp_path):
    av = pytest.importorskip("av")
    from boxmot.engine.tracking.sinks import MotSink
    from boxmot.pipelines.tracking import PipelineResult
    from boxmot.structures import Boxes, Detections, Frame

    path = exports("onnx")[0]
    (v,) = generate_videos(
        str(tmp_path / "v"), str(tiny_synthetic), cameras=1, seconds=4, fps=15, people=2,
        width=160, height=120,
    )  # fmt: skip
    gt = read_mot_boxes(v.boxes)
    with av.open(v.video) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    rows = str(tmp_path / "tracks.txt")
    with boxmot_quiet_no_installs():
        tracker = boxmot.BotSort(reid_weights=Path(path), device="cpu", half=False, frame_rate=15)
        sink = MotSink(rows)
        for i, rgb in enumerate(frames):
            sel = gt[gt[:, 0] == i + 1]
            xyxy = np.concatenate([sel[:, 2:4], sel[:, 2:4] + sel[:, 4:6]], axis=1)
            dets = Detections(
                Boxes(torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4)),
                torch.full((len(sel),), 0.9),
                torch.zeros(len(sel), dtype=torch.int64),
                sample_id=str(i),
            )
            frame = Frame(torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), str(i), None, i)
            sink.write(frame, PipelineResult(dets, tracker.update(dets, frame)))
        sink.close()
    written = read_mot_boxes(rows)
    assert len(written) > 0.5 * len(gt)
    store = str(tmp_path / "site")
    code = main(
        ["ingest", path, v.video, "--boxes", rows, "--store", store, "--camera", "3",
         "--start-time", "2026-12-07T10:00:00Z", "--device", "cpu", "--num-workers", "0",
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    with open_store(store) as st:
        s = st.stats()
    assert s.crops == len(written) and s.tracklets == len(set(written[:, 1].tolist()))


def _benchmark():
    spec = importlib.util.spec_from_file_location(
        "_bench_tracking", Path(__file__).resolve().parents[2] / "benchmarks" / "tracking.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tracking_benchmark_scores_like_the_definitions():
    pytest.importorskip("motmetrics")
    bench = _benchmark()
    a, b = np.array([[0, 0, 10, 20]], float), np.array([[5, 0, 10, 20], [0, 0, 10, 20]], float)
    np.testing.assert_allclose(bench.iou_distance(a, b, 0.2), [[1 - 100 / 300, 0.0]])
    assert np.isnan(bench.iou_distance(a, b)[0, 0])  # IoU 1/3 < 0.5: no match
    boxes = np.array([[0, 0, 10, 20], [50, 0, 10, 20]], float)
    gt = {f: (np.array([1, 2]), boxes) for f in range(1, 11)}
    assert bench.score([bench.accumulate(gt, gt, 10)], ["v"]) == {
        "idf1": 1.0,
        "idsw": 0,
        "mota": 1.0,
    }
    # the tracker swaps the two people half-way: each identity is matched half of the time
    swapped = {f: (np.array([1, 2] if f <= 5 else [2, 1]), boxes) for f in range(1, 11)}
    m = bench.score([bench.accumulate(gt, swapped, 10)], ["v"])
    assert m["idf1"] == pytest.approx(0.5) and m["idsw"] == 2
