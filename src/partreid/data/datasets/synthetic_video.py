"""Short synthetic surveillance videos of the test identities of a synthetic data set, with
MOT ground-truth boxes: footage to ingest into a gallery store and search.

Each camera ``c`` is the synthetic set's camera ``c`` (its scene colours, shear, viewpoint
preference, colour cast, contrast, blur and resolution; cameras past the set's ``num_cams``
continue the same sequence) looking at a static scene. Test identities of the set, in the
outfits they wear in its ``query/`` and ``bounding_box_test/`` crops, walk across the frame
(left to right or right to left, constant speed, a little bobbing, a new random pose every
frame), entering and leaving at random times; most of them pass more than one camera, at
different times; at most three people are in view at once and they overlap sometimes.

Output (``out_dir``)::

    cam1.mkv  cam1.txt  cam2.mkv  cam2.txt  ...  videos.json

``camC.mkv`` is lossless (FFV1 in Matroska: decoded frames are the frames drawn; no sensor
noise, which would make the files many times larger);
``camC.txt`` holds the boxes in MOT format ``frame,id,x,y,w,h,1,-1,-1,-1`` (frames from 1,
whole pixels, the box of the drawn person clipped to the frame, one row per person and frame
while at least ``min_visible`` of the person's width is inside the frame; ids are track ids,
unique within the camera). ``videos.json`` describes each video and maps every track id to the
data set pid it shows, which is the ground truth for checking search results. The same
arguments give the same files byte for byte.

Example::

    from partreid.data.datasets.synthetic import generate_synthetic
    from partreid.data.datasets.synthetic_video import generate_videos

    generate_synthetic("out/data", num_ids=100)
    for v in generate_videos("out/videos", "out/data", cameras=2, seconds=20):
        print(v.video, v.boxes, v.frames, v.tracks)  # tracks: {track id: pid}
    # then e.g. partreid extract out/videos/cam1.mkv --boxes out/videos/cam1.txt ...

Writing the videos needs PyAV (``pip install 'partreid[video]'``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFilter

from ...utils.extras import require
from .base import DatasetError
from .synthetic import (
    GENERATOR_VERSION,
    MARKER,
    SUPERSAMPLE,
    VIEWS,
    Camera,
    Identity,
    _background,
    _Body,
    _rng,
    draw_person,
    read_marker,
    sample_camera,
    sample_identity,
)

VIDEO_GENERATOR_VERSION = 1
INDEX = "videos.json"
MAX_IN_VIEW = 3  # people in one camera's view at the same time, at most


@dataclass(frozen=True)
class VideoInfo:
    """One generated video: its files, timing, and which data set pid each track shows."""

    camera: int  # 1-based, as in the data set's file names (``_c1_``)
    video: str
    boxes: str
    fps: float
    frames: int
    start: float  # seconds on the clock the cameras share at frame 1
    width: int
    height: int
    tracks: Dict[int, int]  # track id -> pid


@dataclass(frozen=True)
class _Track:
    """One walk of one identity across one camera's view."""

    track_id: int
    pid: int
    ident: Identity
    t0: float
    t1: float
    direction: int  # +1 left to right, -1 right to left
    u: float  # person height in pixels (1x)
    ground: float  # y of the feet (1x)
    view: str
    shear: float
    phase: float


# --------------------------------------------------------------------------------------------
# The data set: which identities, in which outfits
# --------------------------------------------------------------------------------------------
def _data_set(data_root: str) -> Tuple[int, int, List[int]]:
    """``(seed, num_cams, test pids)`` of the synthetic set in ``data_root``."""
    meta = read_marker(data_root)
    if meta is None:
        raise DatasetError(
            f"{data_root} holds no {MARKER}: make a synthetic set there first "
            "(partreid.data.datasets.synthetic.generate_synthetic)"
        )
    if meta.get("version") != GENERATOR_VERSION:
        raise DatasetError(
            f"the synthetic set in {data_root} was made by generator version "
            f"{meta.get('version')}, this one draws version {GENERATOR_VERSION}: regenerate it"
        )
    params = meta["params"]
    test_ids = [int(pid) for pid in meta["test_ids"]]
    return int(params["seed"]), int(params["num_cams"]), test_ids


def identity_of(data_seed: int, pid: int) -> Identity:
    """The outfit identity ``pid`` wears in the synthetic set made with ``data_seed``."""
    return sample_identity(_rng(data_seed, 3, pid))  # as synthetic._write_identities draws it


def camera_of(data_seed: int, camera: int) -> Camera:
    """Camera ``camera`` (1-based) of the synthetic set made with ``data_seed``."""
    return sample_camera(_rng(data_seed, 1, camera - 1), camera - 1)  # as generate_synthetic


# --------------------------------------------------------------------------------------------
# Who walks where and when
# --------------------------------------------------------------------------------------------
def _peak_in_view(busy: Sequence[Tuple[float, float]], t0: float, t1: float) -> int:
    """How many of the ``busy`` intervals overlap at the most crowded moment of ``[t0, t1]``."""
    points = [t0] + [s for s, _ in busy if t0 < s < t1]
    return max(sum(1 for s, e in busy if s <= p < e) for p in points)


def _schedule(
    rng: np.random.Generator, pids: Sequence[int], cameras: int, seconds: float
) -> Dict[int, List[Tuple[int, float, float]]]:
    """Per camera the walks ``(pid, enter, leave)`` in seconds: the first 60 % of the (shuffled)
    people pass two cameras one after the other, the others one; no more than
    :data:`MAX_IN_VIEW` in a camera's view at once (a walk that finds no room is left out)."""
    multi = max(1, round(0.6 * len(pids))) if cameras > 1 else 0
    busy: Dict[int, List[Tuple[float, float]]] = {c: [] for c in range(1, cameras + 1)}
    walks: Dict[int, List[Tuple[int, float, float]]] = {c: [] for c in busy}
    for i, pid in enumerate(pids):
        cams = (rng.choice(cameras, 2 if i < multi else 1, replace=False) + 1).tolist()
        durations = [min(seconds * rng.uniform(0.25, 0.4), rng.uniform(5.0, 9.0)) for _ in cams]
        gap = min(2.0, 0.1 * seconds) * rng.uniform(0.5, 1.0)  # walking from camera to camera
        free = 0.0
        for j, (cam, dur) in enumerate(zip(cams, durations)):
            latest = seconds - sum(durations[j:]) - gap * (len(cams) - 1 - j)
            for _ in range(30 if latest >= free else 0):
                t0 = rng.uniform(free, latest)
                if _peak_in_view(busy[cam], t0, t0 + dur) < MAX_IN_VIEW:
                    busy[cam].append((t0, t0 + dur))
                    walks[cam].append((int(pid), t0, t0 + dur))
                    free = t0 + dur + gap
                    break
    return walks


def walker(
    rng: np.random.Generator,
    track_id: int,
    pid: int,
    ident: Identity,
    span: Tuple[float, float],
    cam: Camera,
    height: int,
) -> _Track:
    """One walk across a ``height``-pixel view drawn from ``rng``: direction, depth (nearer
    people, lower feet, are drawn taller), viewpoint, shear and gait phase."""
    depth = rng.random()
    return _Track(
        track_id=track_id,
        pid=pid,
        ident=ident,
        t0=span[0],
        t1=span[1],
        direction=1 if rng.random() < 0.5 else -1,
        u=height * (0.6 + 0.16 * depth) * ident.height,
        ground=height * (0.9 + 0.08 * depth),
        view=VIEWS[int(rng.choice(3, p=cam.view_p))],
        shear=cam.shear + rng.uniform(-0.03, 0.03),
        phase=rng.uniform(0.0, math.pi),
    )


def _tracks(
    walks: Sequence[Tuple[int, float, float]],
    cam: Camera,
    camera: int,
    data_seed: int,
    seed: int,
    height: int,
) -> List[_Track]:
    """The walks of one camera as tracks numbered 1.. by entering time (:func:`walker`)."""
    out = []
    for track_id, (pid, t0, t1) in enumerate(sorted(walks, key=lambda w: (w[1], w[0])), 1):
        rng = _rng(seed, 21, camera, track_id)
        out.append(walker(rng, track_id, pid, identity_of(data_seed, pid), (t0, t1), cam, height))
    return out


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------
class _Scene:
    """One camera's static scene (drawn at :data:`SUPERSAMPLE` x) and its fixed effects."""

    def __init__(self, cam: Camera, camera: int, seed: int, width: int, height: int):
        self.cam, self.width, self.height = cam, width, height
        s = SUPERSAMPLE
        self.background = _background(cam, _rng(seed, 20, camera), height * s, width * s)
        # the data set's colour transform, with the lighting fixed per camera and no noise
        rng = _rng(seed, 22, camera)
        light = 1.0 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, height, dtype=np.float32)
        gain = np.asarray(cam.gain, np.float32) * np.float32(rng.uniform(0.9, 1.1))
        self.scale = (cam.contrast * gain * light[:, None, None]).astype(np.float32)
        offset = np.float32(128.0 - 128.0 * cam.contrast + cam.brightness + 0.5)
        self.offset = (offset * gain * light[:, None, None]).astype(np.float32)

    def finish(self, img: Image.Image) -> np.ndarray:
        """A supersampled frame -> the camera's ``height x width x 3`` uint8 picture."""
        img = img.reduce(SUPERSAMPLE)
        w, h = img.size
        if self.cam.lowres > 1.0:
            small = (max(8, int(w / self.cam.lowres)), max(8, int(h / self.cam.lowres)))
            img = img.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
        if self.cam.blur > 0:
            img = img.filter(ImageFilter.GaussianBlur(self.cam.blur))
        arr = np.asarray(img, dtype=np.float32)
        arr *= self.scale
        arr += self.offset
        return np.clip(arr, 0, 255, out=arr).astype(np.uint8)


def _draw_walker(
    track: _Track, t: float, width: int, rng: np.random.Generator
) -> Tuple[Image.Image, int, int]:
    """The person of ``track`` at time ``t`` in a ``width`` wide frame, drawn supersampled on a
    transparent canvas (the generator draws opaque only, so the alpha channel is the person):
    returns the canvas and its top-left corner in the supersampled frame."""
    s = SUPERSAMPLE
    frac = (t - track.t0) / (track.t1 - track.t0)
    travel = frac * (width + 0.8 * track.u) - 0.4 * track.u  # from fully out to fully out
    cx = travel if track.direction > 0 else width - travel
    bob = 0.015 * track.u * abs(math.sin(2.0 * math.pi * (t - track.t0) + track.phase))
    top = track.ground - 0.98 * track.u - bob
    u = track.u * s
    size = (math.ceil(1.1 * u) + 1, math.ceil(1.15 * u) + 1)
    ox, oy = round(cx * s - size[0] / 2), math.floor(top * s - 0.05 * u)
    canvas = Image.new("RGBA", size, (0, 0, 0, 0))
    body = _Body(cx * s - ox, top * s - oy, u, track.shear)
    draw_person(canvas, track.ident, track.view, body, rng)
    if track.direction < 0:  # walking to the left: the side view faces left
        canvas = canvas.transpose(Image.FLIP_LEFT_RIGHT)
    return canvas, ox, oy


def _person_box(
    bbox: Tuple[int, int, int, int], ox: int, oy: int, width: int, height: int
) -> Tuple[Tuple[int, int, int, int], float]:
    """The whole-pixel box ``x, y, w, h`` of a person drawn at ``bbox`` of a canvas placed at
    ``ox, oy`` (supersampled), clipped to the frame, and the fraction of its width inside."""
    s = SUPERSAMPLE
    x0, x1 = (ox + bbox[0]) // s, -(-(ox + bbox[2]) // s)
    y0, y1 = (oy + bbox[1]) // s, -(-(oy + bbox[3]) // s)
    cx0, cx1 = min(max(x0, 0), width), min(max(x1, 0), width)
    cy0, cy1 = min(max(y0, 0), height), min(max(y1, 0), height)
    return (cx0, cy0, cx1 - cx0, cy1 - cy0), (cx1 - cx0) / (x1 - x0)


def _render_frame(
    scene: _Scene, tracks: Sequence[_Track], frame: int, fps: float, seed: int, camera: int
) -> Tuple[np.ndarray, List[Tuple[int, Tuple[int, int, int, int], float]]]:
    """Frame ``frame`` (1-based) of a camera: the picture and ``(track id, box, visible)`` of
    each person in view, far ones (higher feet) drawn first."""
    t = (frame - 1) / fps
    img = scene.background.copy()
    people = []
    for track in sorted(tracks, key=lambda tr: (tr.ground, tr.track_id)):
        if not track.t0 <= t <= track.t1:
            continue
        rng = _rng(seed, 23, camera, track.track_id, frame)  # the pose of this frame
        canvas, ox, oy = _draw_walker(track, t, scene.width, rng)
        bbox = canvas.getchannel("A").getbbox()
        if bbox is None:
            continue
        img.paste(canvas, (ox, oy), canvas)
        box, visible = _person_box(bbox, ox, oy, scene.width, scene.height)
        if box[2] > 0 and box[3] > 0:
            people.append((track.track_id, box, visible))
    return scene.finish(img), people


def camera_background(
    data_root: str, camera: int, width: int = 320, height: int = 240, seed: int = 0
) -> np.ndarray:
    """The empty scene of video camera ``camera`` (1-based) as :func:`generate_videos` with the
    same ``data_root``, size and ``seed`` films it: ``height x width x 3`` uint8."""
    data_seed, _, _ = _data_set(data_root)
    scene = _Scene(camera_of(data_seed, camera), camera, seed, width, height)
    return scene.finish(scene.background)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _write_camera(
    path: str,
    boxes_path: str,
    scene: _Scene,
    tracks: Sequence[_Track],
    num_frames: int,
    fps: float,
    seed: int,
    camera: int,
    min_visible: float,
) -> Dict[int, Tuple[int, int]]:
    """Encode one camera's frames as lossless FFV1 in Matroska and write its MOT boxes; return
    ``{track id: (first, last frame with a box)}``."""
    av = require("av", "video")
    lines, seen = [], {}
    # bitexact: no random segment id or muxer version in the file, so it is the same every run
    with av.open(path, "w", format="matroska", container_options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("ffv1", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = scene.width, scene.height
        stream.pix_fmt = "bgr0"  # RGB without loss
        for frame in range(1, num_frames + 1):
            picture, people = _render_frame(scene, tracks, frame, fps, seed, camera)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                out.mux(packet)
            for track_id, (x, y, w, h), visible in sorted(people):
                if visible >= min_visible:
                    seen[track_id] = (seen.get(track_id, (frame, frame))[0], frame)
                    lines.append(f"{frame},{track_id},{x},{y},{w},{h},1,-1,-1,-1\n")
        for packet in stream.encode():
            out.mux(packet)
    with open(boxes_path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)
    return seen


def _check(cameras: int, seconds: float, fps: float, people: int, width: int, height: int) -> int:
    """Validate the arguments of :func:`generate_videos`; return the number of frames."""
    if not 1 <= cameras <= 9:
        raise DatasetError(
            f"cameras must be in 1..9 (one digit, as in the data set), got {cameras}"
        )
    if not (seconds > 0 and fps > 0):
        raise DatasetError(f"seconds and fps must be > 0, got {seconds} and {fps}")
    if people < 1:
        raise DatasetError(f"people must be >= 1, got {people}")
    if width < 32 or height < 32:
        raise DatasetError(f"frame size {width}x{height} is too small; use at least 32x32")
    return max(1, round(seconds * fps))


def generate_videos(
    out_dir: str,
    data_root: str,
    cameras: int = 2,
    seconds: float = 20.0,
    fps: float = 10.0,
    people: int = 6,
    width: int = 320,
    height: int = 240,
    seed: int = 0,
    min_visible: float = 0.5,
) -> List[VideoInfo]:
    """Write ``cameras`` videos of ``people`` test identities of the synthetic set in
    ``data_root`` (``camC.mkv``, ``camC.txt`` MOT boxes, ``videos.json``) into ``out_dir``."""
    num_frames = _check(cameras, seconds, fps, people, width, height)
    data_seed, _, test_ids = _data_set(data_root)
    rng = _rng(seed, 24)
    pids = [int(p) for p in rng.permutation(test_ids)[: min(people, len(test_ids))]]
    walks = _schedule(rng, pids, cameras, num_frames / fps)
    os.makedirs(out_dir, exist_ok=True)
    infos, entries = [], []
    for camera in range(1, cameras + 1):
        cam = camera_of(data_seed, camera)
        tracks = _tracks(walks[camera], cam, camera, data_seed, seed, height)
        scene = _Scene(cam, camera, seed, width, height)
        video, boxes = (os.path.join(out_dir, f"cam{camera}{ext}") for ext in (".mkv", ".txt"))
        seen = _write_camera(
            video, boxes, scene, tracks, num_frames, fps, seed, camera, min_visible
        )
        shown = [tr for tr in tracks if tr.track_id in seen]
        pid_of = {tr.track_id: tr.pid for tr in shown}
        infos.append(VideoInfo(camera, video, boxes, fps, num_frames, 0.0, width, height, pid_of))
        entries.append(_index_entry(infos[-1], shown, seen))
    index = {
        "generator": __name__,
        "version": VIDEO_GENERATOR_VERSION,
        "data_root": os.path.abspath(data_root),
        "data_seed": data_seed,
        "seed": seed,
        "videos": entries,
    }
    with open(os.path.join(out_dir, INDEX), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
    return infos


def _index_entry(
    info: VideoInfo, tracks: Sequence[_Track], seen: Dict[int, Tuple[int, int]]
) -> Dict[str, object]:
    """What ``videos.json`` says about one video (file names relative to the folder)."""
    return {
        "camera": info.camera,
        "file": os.path.basename(info.video),
        "boxes": os.path.basename(info.boxes),
        "fps": info.fps,
        "frames": info.frames,
        "start": info.start,
        "width": info.width,
        "height": info.height,
        "tracks": {
            str(tr.track_id): {
                "pid": tr.pid,
                "first_frame": seen[tr.track_id][0],
                "last_frame": seen[tr.track_id][1],
                "direction": "left to right" if tr.direction > 0 else "right to left",
            }
            for tr in tracks
        },
    }
