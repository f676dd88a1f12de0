"""A synthetic multi-camera site: people walking from camera to camera, with ground truth.

The footage of :mod:`partreid.data.datasets.synthetic_video`, grown into a site: ``cameras``
views (each the synthetic set's camera of that number, with a pillar in front of the scene in
about half of them) joined by walkways, ``people`` identities that each walk a route of two to
five cameras, crossing every view at a constant speed and taking a transit time drawn from the
walkway's window to reach the next view. The people are new to the data set (pids after its
last one, in the outfits :func:`~partreid.data.datasets.synthetic_video.identity_of` gives
them), so a model trained on the set has never seen them.

What a tracker would give is what the box files hold: a person's pass through a view is cut
into several tracks wherever the person is hidden (``visible < min_visible`` of the body drawn
in the frame: behind the pillar, or behind a nearer person crossing in front), and a track
shorter than ``min_frames`` frames is dropped. Track ids are numbered 1.. per camera by first
frame, so one person has several tracks in one camera and many across the site.

Output (``out_dir``)::

    cam1.mkv cam1.txt ... camC.mkv camC.txt   the videos (FFV1, lossless) and MOT boxes
    transitions.csv                           from_camera,to_camera,min_s,max_s of the walkways
    site.json                                 the ground truth (below)

Every camera's frame 1 is at second 0 of the site's clock (``start`` in ``site.json`` is the
ISO time :func:`generate_site` was given for it). A walkway's window in ``transitions.csv``
holds every gap between the end of a person's track in one view and the start of the next in
the other (the walking time plus the time spent entering and leaving the views, with a second
of slack either side). ``site.json``: the generator and its arguments, ``start``, ``fps``,
``videos`` (as ``videos.json`` of the video generator: camera, files, frames, ``tracks``
``{track id: {pid, first_frame, last_frame}}``), ``transitions`` and ``people`` (per pid the
route: camera, enter and leave second of each pass). The same arguments give the same files.

Example::

    from partreid.data.datasets.synthetic import generate_synthetic
    from partreid.data.datasets.synthetic_site import generate_site

    generate_synthetic("out/data")
    site = generate_site("out/site", "out/data", cameras=6, people=120)
    # partreid ingest model.pth out/site/cam1.mkv --boxes out/site/cam1.txt --camera 1 ...

Writing the videos needs PyAV (``pip install 'partreid[video]'``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import ImageDraw

from ...utils.extras import require
from .base import DatasetError
from .synthetic import MARKER, _rng, read_marker
from .synthetic_video import (
    VideoInfo,
    _draw_walker,
    _Scene,
    _Track,
    camera_of,
    identity_of,
    walker,
)

SITE_GENERATOR_VERSION = 1
INDEX = "site.json"
TRANSITIONS = "transitions.csv"
WALK_SECONDS = (3.0, 5.5)  # time to cross a view, fully out to fully out
ROUTE_LENGTH = (2, 3, 3, 4, 4, 5)  # cameras per route, drawn uniformly from this list
SLACK = 1.0  # seconds added on both sides of a walkway's window in transitions.csv


@dataclass(frozen=True)
class SiteInfo:
    """A generated site: its videos, the walkways file and the ground truth file."""

    videos: List[VideoInfo]
    transitions: str
    ground_truth: str


@dataclass(frozen=True)
class Pass:
    """One person crossing one camera's view, fully out to fully out (site seconds)."""

    pid: int
    camera: int
    t0: float
    t1: float


# --------------------------------------------------------------------------------------------
# The site: walkways and routes
# --------------------------------------------------------------------------------------------
def site_walkways(cameras: int, seed: int) -> Dict[Tuple[int, int], Tuple[float, float]]:
    """The walkways ``{(a, b): (min_s, max_s)}`` (``a < b``, both ways) of a site: a ring
    through the cameras in order plus a chord from every third camera across the ring."""
    rng = _rng(seed, 30)
    pairs = {(c, c % cameras + 1) for c in range(1, cameras + 1)} if cameras > 2 else {(1, 2)}
    for c in range(1, cameras + 1, 3):
        other = (c + cameras // 2 - 1) % cameras + 1
        if other != c:
            pairs.add((c, other))
    walkways = {}
    for a, b in sorted({(min(p), max(p)) for p in pairs if p[0] != p[1]}):
        low = float(round(rng.uniform(6.0, 20.0), 1))
        walkways[(a, b)] = (low, float(round(low + rng.uniform(6.0, 15.0), 1)))
    return walkways


def _route(
    rng: np.random.Generator, walkways: Dict[Tuple[int, int], Tuple[float, float]], cameras: int
) -> List[Tuple[int, float, float]]:
    """One person's cameras with the walk time across each and the transit to the next."""
    nbrs: Dict[int, List[int]] = {c: [] for c in range(1, cameras + 1)}
    for a, b in walkways:
        nbrs[a].append(b)
        nbrs[b].append(a)
    length = int(ROUTE_LENGTH[int(rng.integers(len(ROUTE_LENGTH)))])
    cams = [int(rng.integers(cameras)) + 1]
    while len(cams) < length:
        options = sorted(nbrs[cams[-1]])
        if len(cams) > 1 and len(options) > 1:
            options.remove(cams[-2])  # no turning back at once
        cams.append(int(options[int(rng.integers(len(options)))]))
    out = []
    for i, cam in enumerate(cams):
        walk = float(rng.uniform(*WALK_SECONDS))
        gap = 0.0
        if i + 1 < len(cams):
            gap = float(rng.uniform(*walkways[(min(cam, cams[i + 1]), max(cam, cams[i + 1]))]))
        out.append((cam, walk, gap))
    return out


def site_passes(
    pids: Sequence[int],
    walkways: Dict[Tuple[int, int], Tuple[float, float]],
    cameras: int,
    seconds: float,
    seed: int,
) -> List[Pass]:
    """Every person's passes: a route through the walkways, started at a random second so
    that the whole route fits in ``[0, seconds]`` (a route too long for it is cut short)."""
    out = []
    for pid in pids:
        rng = _rng(seed, 31, pid)
        route = _route(rng, walkways, cameras)
        total = sum(w + g for _, w, g in route)
        t = float(rng.uniform(0.0, max(0.0, seconds - total)))
        for cam, walk, gap in route:
            if t + walk > seconds:
                break
            out.append(Pass(int(pid), cam, t, t + walk))
            t += walk + gap
    return out


# --------------------------------------------------------------------------------------------
# Drawing with occlusion
# --------------------------------------------------------------------------------------------
def _pillar(camera: int, seed: int, width: int) -> Optional[Tuple[int, int]]:
    """The x range (1x pixels) of the pillar in front of a camera's scene, or None."""
    rng = _rng(seed, 32, camera)
    if rng.random() < 0.5 and camera != 1:
        return None
    w = max(4, round(width * rng.uniform(0.1, 0.14)))
    x0 = round(width * rng.uniform(0.3, 0.6))
    return x0, x0 + w


def _walks(passes: Sequence[Pass], camera: int, data_seed: int, seed: int, h: int) -> List[_Track]:
    """The passes of one camera as walkers (``track_id`` = the pass's index in the camera)."""
    cam = camera_of(data_seed, camera)
    mine = sorted((p for p in passes if p.camera == camera), key=lambda p: (p.t0, p.pid))
    return [
        walker(
            _rng(seed, 33, camera, i), i, p.pid, identity_of(data_seed, p.pid), (p.t0, p.t1), cam, h
        )
        for i, p in enumerate(mine)
    ]


def _paste_owner(owner: np.ndarray, alpha: np.ndarray, ox: int, oy: int, who: int) -> int:
    """Mark the pixels of ``alpha`` (> 0) placed at ``ox, oy`` as ``who``'s; their count."""
    h, w = owner.shape
    ah, aw = alpha.shape
    x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + aw, w), min(oy + ah, h)
    if x1 > x0 and y1 > y0:
        sub = alpha[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        owner[y0:y1, x0:x1][sub] = who
    return int(alpha.sum())


def _site_frame(
    scene: _Scene,
    walks: Sequence[_Track],
    pillar: Optional[Tuple[int, int]],
    t: float,
    rng_key: Tuple[int, int, int],
) -> Tuple[np.ndarray, List[Tuple[int, Tuple[int, int, int, int], float]]]:
    """The frame at second ``t``: the picture and, per person in it, ``(walk, box, visible)``
    with ``visible`` the share of the drawn body not hidden (by the frame's edge, the pillar or
    a nearer person) and ``box`` its whole body clipped to the frame (1x pixels)."""
    s = 2  # synthetic.SUPERSAMPLE, as the scene is drawn
    img = scene.background.copy()
    owner = np.full((img.size[1], img.size[0]), -1, np.int32)
    drawn = []
    for walk in sorted(walks, key=lambda tr: (tr.ground, tr.track_id)):
        if not walk.t0 <= t <= walk.t1:
            continue
        rng = _rng(rng_key[0], 34, rng_key[1], rng_key[2], walk.track_id)
        canvas, ox, oy = _draw_walker(walk, t, scene.width, rng)
        alpha = np.asarray(canvas.getchannel("A")) > 0
        bbox = canvas.getchannel("A").getbbox()
        if bbox is None:
            continue
        img.paste(canvas, (ox, oy), canvas)
        total = _paste_owner(owner, alpha, ox, oy, walk.track_id)
        drawn.append((walk.track_id, bbox, ox, oy, total))
    if pillar is not None:
        x0, x1 = pillar[0] * s, pillar[1] * s
        ImageDraw.Draw(img).rectangle([x0, 0, x1 - 1, img.size[1]], fill=(92, 88, 84))
        owner[:, x0:x1] = -2
    counts = np.bincount(owner[owner >= 0].ravel(), minlength=max(w.track_id for w in walks) + 1)
    people = []
    for who, bbox, ox, oy, total in drawn:
        x0, x1 = (ox + bbox[0]) // s, -(-(ox + bbox[2]) // s)
        y0, y1 = (oy + bbox[1]) // s, -(-(oy + bbox[3]) // s)
        cx0, cx1 = min(max(x0, 0), scene.width), min(max(x1, 0), scene.width)
        cy0, cy1 = min(max(y0, 0), scene.height), min(max(y1, 0), scene.height)
        if cx1 > cx0 and cy1 > cy0:
            box = (cx0, cy0, cx1 - cx0, cy1 - cy0)
            people.append((who, box, float(counts[who]) / max(total, 1)))
    return scene.finish(img), people


def _record_camera(
    path: str,
    scene: _Scene,
    walks: Sequence[_Track],
    pillar: Optional[Tuple[int, int]],
    num_frames: int,
    fps: float,
    key: Tuple[int, int],
) -> Dict[int, List[Tuple[int, Tuple[int, int, int, int], float]]]:
    """Encode one camera's frames (FFV1 in Matroska); return per walk its
    ``(frame, box, visible)`` in every frame it is drawn in."""
    av = require("av", "video")
    seen: Dict[int, List[Tuple[int, Tuple[int, int, int, int], float]]] = {}
    with av.open(path, "w", format="matroska", container_options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("ffv1", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = scene.width, scene.height
        stream.pix_fmt = "bgr0"
        for frame in range(1, num_frames + 1):
            t = (frame - 1) / fps
            live = [w for w in walks if w.t0 <= t <= w.t1]
            if live:
                picture, people = _site_frame(scene, live, pillar, t, (key[0], key[1], frame))
            else:
                picture, people = _empty_frame(scene, pillar), []
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                out.mux(packet)
            for who, box, visible in people:
                seen.setdefault(who, []).append((frame, box, visible))
        for packet in stream.encode():
            out.mux(packet)
    return seen


def _empty_frame(scene: _Scene, pillar: Optional[Tuple[int, int]]) -> np.ndarray:
    """The camera's picture with nobody in view (cached on the scene object)."""
    cached = getattr(scene, "_site_empty", None)
    if cached is None:
        img = scene.background.copy()
        if pillar is not None:
            ImageDraw.Draw(img).rectangle(
                [pillar[0] * 2, 0, pillar[1] * 2 - 1, img.size[1]], fill=(92, 88, 84)
            )
        cached = scene.finish(img)
        scene._site_empty = cached  # type: ignore[attr-defined]
    return cached


def cut_tracks(
    frames: Sequence[Tuple[int, Tuple[int, int, int, int], float]],
    min_visible: float,
    min_frames: int,
) -> List[List[Tuple[int, Tuple[int, int, int, int]]]]:
    """A person's frames in one view cut into tracks: runs of consecutive frames with at least
    ``min_visible`` of the body in sight, each at least ``min_frames`` long."""
    runs: List[List[Tuple[int, Tuple[int, int, int, int]]]] = []
    last = None
    for frame, box, visible in sorted(frames):
        if visible < min_visible:
            continue
        if last is None or frame != last + 1:
            runs.append([])
        runs[-1].append((frame, box))
        last = frame
    return [r for r in runs if len(r) >= min_frames]


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _check(cameras: int, people: int, seconds: float, fps: float, width: int, height: int) -> int:
    """Validate the arguments of :func:`generate_site`; return the number of frames."""
    if not 2 <= cameras <= 9:
        raise DatasetError(
            f"cameras must be in 2..9 (one digit, as in the data set), got {cameras}"
        )
    if people < 1:
        raise DatasetError(f"people must be >= 1, got {people}")
    if not (seconds > 0 and fps > 0):
        raise DatasetError(f"seconds and fps must be > 0, got {seconds} and {fps}")
    if width < 32 or height < 32:
        raise DatasetError(f"frame size {width}x{height} is too small; use at least 32x32")
    return max(1, round(seconds * fps))


def _new_pids(data_root: str, people: int) -> Tuple[int, List[int]]:
    """The set's seed and ``people`` pids after its last identity."""
    meta = read_marker(data_root)
    if meta is None:
        raise DatasetError(
            f"{data_root} holds no {MARKER}: make a synthetic set there first "
            "(partreid.data.datasets.synthetic.generate_synthetic)"
        )
    params = meta["params"]
    first = int(params["num_ids"]) + 1
    return int(params["seed"]), list(range(first, first + people))


def _write_camera(
    out_dir: str,
    camera: int,
    passes: Sequence[Pass],
    size: Tuple[int, int],
    timing: Tuple[int, float],
    seeds: Tuple[int, int],
    cuts: Tuple[float, int],
) -> Tuple[VideoInfo, Dict[str, object]]:
    """One camera's video, MOT boxes and ground-truth entry."""
    (width, height), (num_frames, fps), (data_seed, seed) = size, timing, seeds
    walks = _walks(passes, camera, data_seed, seed, height)
    scene = _Scene(camera_of(data_seed, camera), camera, seed, width, height)
    video, boxes = (os.path.join(out_dir, f"cam{camera}{ext}") for ext in (".mkv", ".txt"))
    seen = _record_camera(
        video, scene, walks, _pillar(camera, seed, width), num_frames, fps, (seed, camera)
    )
    tracks = []
    for walk in walks:
        for run in cut_tracks(seen.get(walk.track_id, []), *cuts):
            tracks.append((run[0][0], walk.track_id, walk.pid, run))
    tracks.sort(key=lambda tr: (tr[0], tr[1]))
    lines, entry = [], {}
    for track_id, (_, _, pid, run) in enumerate(tracks, 1):
        lines += [(f, track_id, b) for f, b in run]
        entry[str(track_id)] = {"pid": pid, "first_frame": run[0][0], "last_frame": run[-1][0]}
    with open(boxes, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(
            f"{fr},{i},{x},{y},{w},{h},1,-1,-1,-1\n" for fr, i, (x, y, w, h) in sorted(lines)
        )
    pid_of = {int(k): int(v["pid"]) for k, v in entry.items()}
    info = VideoInfo(camera, video, boxes, fps, num_frames, 0.0, width, height, pid_of)
    return info, {
        "camera": camera,
        "file": os.path.basename(video),
        "boxes": os.path.basename(boxes),
        "fps": fps,
        "frames": num_frames,
        "start": 0.0,
        "width": width,
        "height": height,
        "tracks": entry,
    }


def write_transitions(
    path: str, walkways: Dict[Tuple[int, int], Tuple[float, float]], fps: float, walk_max: float
) -> List[Dict[str, float]]:
    """Write ``from_camera,to_camera,min_s,max_s`` for both ways of each walkway; return rows.

    A track's gap to the next view's track is the walking time plus the time spent entering
    and leaving the views while less than ``min_visible`` shows (at most half a walk across
    each, with ``walk_max`` the longest walk) and a frame either side; ``SLACK`` on top.
    """
    extra = walk_max + 2.0 / fps
    rows = []
    for (a, b), (lo, hi) in sorted(walkways.items()):
        for x, y in ((a, b), (b, a)):
            rows.append(
                {
                    "from_camera": x,
                    "to_camera": y,
                    "min_s": round(lo - SLACK, 1),
                    "max_s": round(hi + extra + SLACK, 1),
                }
            )
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("from_camera,to_camera,min_s,max_s\n")
        f.writelines(
            f"{r['from_camera']},{r['to_camera']},{r['min_s']},{r['max_s']}\n" for r in rows
        )
    return rows


def generate_site(
    out_dir: str,
    data_root: str,
    cameras: int = 6,
    people: int = 120,
    seconds: float = 300.0,
    fps: float = 3.0,
    width: int = 192,
    height: int = 128,
    seed: int = 0,
    min_visible: float = 0.5,
    min_frames: int = 2,
    start: str = "2026-12-03T14:00:00Z",
) -> SiteInfo:
    """Write a site of ``cameras`` videos in which ``people`` new identities of the synthetic
    set in ``data_root`` walk from camera to camera (see the module docstring)."""
    num_frames = _check(cameras, people, seconds, fps, width, height)
    data_seed, pids = _new_pids(data_root, people)
    walkways = site_walkways(cameras, seed)
    passes = site_passes(pids, walkways, cameras, num_frames / fps, seed)
    os.makedirs(out_dir, exist_ok=True)
    infos, entries = [], []
    for camera in range(1, cameras + 1):
        info, entry = _write_camera(
            out_dir,
            camera,
            passes,
            (width, height),
            (num_frames, fps),
            (data_seed, seed),
            (min_visible, min_frames),
        )
        infos.append(info)
        entries.append(entry)
    transitions = os.path.join(out_dir, TRANSITIONS)
    rows = write_transitions(transitions, walkways, fps, WALK_SECONDS[1])
    people_routes: Dict[str, List[Dict[str, float]]] = {}
    for p in passes:
        people_routes.setdefault(str(p.pid), []).append(
            {"camera": p.camera, "enter": round(p.t0, 3), "leave": round(p.t1, 3)}
        )
    index = {
        "generator": __name__,
        "version": SITE_GENERATOR_VERSION,
        "data_root": os.path.abspath(data_root),
        "data_seed": data_seed,
        "params": {
            "cameras": cameras,
            "people": people,
            "seconds": seconds,
            "fps": fps,
            "width": width,
            "height": height,
            "seed": seed,
            "min_visible": min_visible,
            "min_frames": min_frames,
        },
        "start": start,
        "fps": fps,
        "videos": entries,
        "transitions": rows,
        "people": people_routes,
    }
    ground_truth = os.path.join(out_dir, INDEX)
    with open(ground_truth, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
    return SiteInfo(infos, transitions, ground_truth)


def read_site(out_dir: str) -> Dict[str, object]:
    """The ground truth of a generated site (``site.json``)."""
    path = os.path.join(out_dir, INDEX)
    if not os.path.isfile(path):
        raise DatasetError(
            f"{out_dir} holds no {INDEX}: generate a site there first (generate_site)"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)
