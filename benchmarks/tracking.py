"""BoxMOT trackers with and without a partreid Re-ID model, scored with IDF1 (py-motmetrics).

    python benchmarks/tracking.py --checkpoint demo/run/last.pth      # a model of `partreid demo`
    python benchmarks/tracking.py --work /tmp/trk                     # trains the demo model first

The videos are the synthetic surveillance videos (``partreid.data.datasets.synthetic_video``) of
the checkpoint's synthetic data set: its *test* identities walking across --cameras scenes, so
the model has never seen them. The detector is simulated from the ground-truth boxes: each box
jittered (centre and size, --jitter of its size), dropped at random (--miss) and in runs of
--gap-frames frames (--gaps per track and frame: occlusions, where appearance has to re-find the
person), and --fp false positives per frame (person-shaped boxes anywhere). Every tracker sees
the same detections.

Trackers (BoxMOT): BoT-SORT and DeepOCSORT once with the partreid model (its export run by
BoxMOT's own ReID runtime: ``--runtime onnx`` or ``openvino``) and once without appearance
(``use_embeddings=False``); StrongSORT (appearance only); ByteTrack (motion only) for reference.
Scored per camera against the ground truth with IoU >= 0.5 and summed over cameras: IDF1, ID
switches, MOTA, and frames per second of the tracker alone (with its Re-ID forward passes; the
video decoding is not counted). BoxMOT's request to pip-install its pinned onnxruntime is
refused (partreid.deploy.trackers). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from partreid.data.datasets.synthetic_video import generate_videos
from partreid.data.sources import read_mot_boxes
from partreid.deploy.export import export_onnx
from partreid.deploy.openvino import export_openvino
from partreid.deploy.trackers import boxmot_quiet_no_installs, write_sidecar
from partreid.inference import load_model

Rows = Dict[int, Tuple[np.ndarray, np.ndarray]]  # frame -> (ids (N,), boxes x, y, w, h (N, 4))


def read_boxes(path: str) -> Rows:
    """A MOT file (partreid's ground truth or a tracker's rows) -> frame -> (ids, xywh)."""
    rows = read_mot_boxes(path)
    out: Rows = {}
    for f in np.unique(rows[:, 0]).astype(int):
        sel = rows[rows[:, 0] == f]
        out[int(f)] = (sel[:, 1].astype(int), sel[:, 2:6].astype(np.float64))
    return out


def simulate_detections(
    gt: Rows, frames: int, size: Tuple[int, int], rng: np.random.Generator, args
) -> Dict[int, np.ndarray]:
    """Detector output per frame, ``(N, 6)`` x1, y1, x2, y2, confidence, class 0."""
    width, height = size
    gap_left: Dict[int, int] = {}
    out = {}
    for f in range(1, frames + 1):
        ids, boxes = gt.get(f, (np.zeros(0, int), np.zeros((0, 4))))
        dets = []
        for tid, (x, y, w, h) in zip(ids.tolist(), boxes):
            if gap_left.get(tid, 0) > 0:
                gap_left[tid] -= 1
                continue
            if rng.random() < args.gaps:
                gap_left[tid] = int(rng.integers(args.gap_frames[0], args.gap_frames[1] + 1))
                continue
            if rng.random() < args.miss:
                continue
            cx = x + w / 2 + rng.normal(0, args.jitter * w)
            cy = y + h / 2 + rng.normal(0, args.jitter * h)
            w2, h2 = w * np.exp(rng.normal(0, args.jitter)), h * np.exp(rng.normal(0, args.jitter))
            dets.append(
                [cx - w2 / 2, cy - h2 / 2, cx + w2 / 2, cy + h2 / 2, rng.uniform(0.6, 0.95)]
            )
        for _ in range(rng.poisson(args.fp)):
            h2 = rng.uniform(0.25, 0.6) * height
            w2 = h2 * rng.uniform(0.3, 0.5)
            x0, y0 = rng.uniform(0, width - w2), rng.uniform(0, height - h2)
            dets.append([x0, y0, x0 + w2, y0 + h2, rng.uniform(0.3, 0.75)])
        arr = np.array(dets, np.float32).reshape(-1, 5)
        arr[:, [0, 2]] = arr[:, [0, 2]].clip(0, width - 1)
        arr[:, [1, 3]] = arr[:, [1, 3]].clip(0, height - 1)
        out[f] = np.concatenate([arr, np.zeros((len(arr), 1), np.float32)], axis=1)
    return out


def iou_distance(a: np.ndarray, b: np.ndarray, min_iou: float = 0.5) -> np.ndarray:
    """``1 - IoU`` of x, y, w, h boxes (NaN below ``min_iou``: not a match), as motmetrics
    wants (its own ``iou_matrix`` calls ``np.asfarray``, gone in NumPy 2)."""
    if len(a) == 0 or len(b) == 0:
        return np.empty((len(a), len(b)))
    a1, a2 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b1, b2 = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    inter = np.clip(np.minimum(a2, b2) - np.maximum(a1, b1), 0, None).prod(axis=2)
    union = a[:, None, 2:].prod(axis=2) + b[None, :, 2:].prod(axis=2) - inter
    d = 1.0 - inter / np.maximum(union, 1e-12)
    d[d > 1.0 - min_iou] = np.nan
    return d


def accumulate(gt: Rows, hyp: Rows, frames: int):
    """A motmetrics accumulator of one video."""
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=False)
    empty = (np.zeros(0, int), np.zeros((0, 4)))
    for f in range(1, frames + 1):
        (gi, gb), (hi, hb) = gt.get(f, empty), hyp.get(f, empty)
        acc.update(gi.tolist(), hi.tolist(), iou_distance(gb, hb), frameid=f)
    return acc


def score(accs: List, names: List[str]) -> Dict[str, float]:
    """IDF1, ID switches and MOTA over several videos (motmetrics' overall row)."""
    import motmetrics as mm

    mh = mm.metrics.create()
    s = mh.compute_many(
        accs, names=names, metrics=["idf1", "num_switches", "mota"], generate_overall=True
    )
    row = s.loc["OVERALL"]
    return {
        "idf1": float(row["idf1"]),
        "idsw": int(row["num_switches"]),
        "mota": float(row["mota"]),
    }


def decode(video: str) -> List[np.ndarray]:
    """Every frame of ``video`` as H x W x 3 uint8 BGR (what BoxMOT takes)."""
    import av

    with av.open(video) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


def make_tracker(kind: str, reid: Optional[str], fps: float):
    """A BoxMOT tracker; ``reid``: the exported partreid model it runs, None: no appearance."""
    import boxmot

    common = {"reid_weights": Path(reid), "device": "cpu", "half": False} if reid else {}
    if kind == "botsort":
        return boxmot.BotSort(frame_rate=int(round(fps)), use_embeddings=bool(reid), **common)
    if kind == "deepocsort":
        return boxmot.DeepOcSort(use_embeddings=bool(reid), **common)
    if kind == "strongsort":
        return boxmot.StrongSort(**common)
    if kind == "bytetrack":
        return boxmot.ByteTrack(frame_rate=int(round(fps)))
    raise SystemExit(f"unknown tracker {kind}")


def track(tracker, frames: List[np.ndarray], dets: Dict[int, np.ndarray]) -> Tuple[Rows, float]:
    """Run ``tracker`` over a video; its rows (frame -> ids, xywh) and the seconds it took."""
    out: Rows = {}
    t = time.perf_counter()
    for f, frame in enumerate(frames, start=1):
        res = np.asarray(tracker.update(dets[f], frame)).reshape(-1, 8)
        xyxy = res[:, :4].astype(np.float64)
        out[f] = (
            res[:, 4].astype(int),
            np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1),
        )
    return out, time.perf_counter() - t


def _checkpoint(args) -> str:
    if args.checkpoint:
        return args.checkpoint
    ckpt = os.path.join(args.work, "demo", "run", "last.pth")
    if not os.path.isfile(ckpt):
        from partreid.demo import run_demo

        print(f"training the demo model into {args.work}/demo (once) ...")
        run_demo(os.path.join(args.work, "demo"))
    return ckpt


def _export(ckpt: str, runtime: str, work: str) -> str:
    """The checkpoint's export for BoxMOT (with its sidecar), made once per checkpoint."""
    model = load_model(ckpt, "cpu")
    path = os.path.join(work, f"reid.{'xml' if runtime == 'openvino' else 'onnx'}")
    if not os.path.isfile(path) or os.path.getmtime(path) < os.path.getmtime(ckpt):
        (export_openvino if runtime == "openvino" else export_onnx)(model, path)
    write_sidecar(path, model.info)
    return path


def _videos(ckpt: str, args):
    root = load_model(ckpt).info.config["data"]["root"]
    folder = os.path.join(args.work, "videos")
    return generate_videos(
        folder, root, cameras=args.cameras, seconds=args.seconds, fps=args.fps,
        people=args.people, seed=args.seed,
    )  # fmt: skip


def parse(argv=None) -> argparse.Namespace:
    """The benchmark's options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", help="a model trained on a synthetic set (default: the demo's)")
    p.add_argument("--work", default="/tmp/partreid_tracking", help="videos, exports, demo model")
    p.add_argument("--runtime", choices=["onnx", "openvino"], default="onnx")
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--people", type=int, default=12)
    p.add_argument("--jitter", type=float, default=0.05)
    p.add_argument("--miss", type=float, default=0.03)
    p.add_argument("--gaps", type=float, default=0.02)
    p.add_argument("--gap-frames", type=int, nargs=2, default=[3, 10])
    p.add_argument("--fp", type=float, default=0.15, help="false positives per frame (mean)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument(
        "--trackers", nargs="+", default=["botsort", "deepocsort", "strongsort", "bytetrack"]
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Print the table."""
    args = parse(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    ckpt = _checkpoint(args)
    reid = _export(ckpt, args.runtime, args.work)
    videos = _videos(ckpt, args)
    rng = np.random.default_rng(args.seed)
    data = []
    for v in videos:
        gt = read_boxes(v.boxes)
        data.append(
            (
                v,
                gt,
                decode(v.video),
                simulate_detections(gt, v.frames, (v.width, v.height), rng, args),
            )
        )
    runs = []
    for kind in args.trackers:
        variants = {"strongsort": [reid], "bytetrack": [None]}.get(kind, [reid, None])
        runs += [(kind, r) for r in variants]
    print(
        f"{len(videos)} videos, {sum(v.frames for v in videos)} frames at {args.fps:g} fps, "
        f"{args.people} people; detections: jitter {args.jitter}, miss {args.miss}, gaps "
        f"{args.gaps}/frame of {args.gap_frames[0]}-{args.gap_frames[1]} frames, {args.fp} "
        f"false positives/frame; Re-ID: {os.path.basename(reid)} ({args.runtime}) of {ckpt}\n"
    )
    print(f"{'tracker':<12} {'appearance':<22} {'IDF1':>6} {'IDsw':>5} {'MOTA':>6} {'fps':>7}")
    with boxmot_quiet_no_installs():
        for kind, r in runs:
            accs, secs, frames = [], 0.0, 0
            for v, gt, pics, dets in data:
                hyp, s = track(make_tracker(kind, r, v.fps), pics, dets)
                accs.append(accumulate(gt, hyp, v.frames))
                secs, frames = secs + s, frames + v.frames
            m = score(accs, [f"cam{v.camera}" for v, *_ in data])
            what = f"partreid ({args.runtime})" if r else "none"
            print(
                f"{kind:<12} {what:<22} {100 * m['idf1']:6.1f} {m['idsw']:5d} "
                f"{100 * m['mota']:6.1f} {frames / secs:7.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
