"""``partreid ingest``: crops from a camera into a gallery store, as the footage arrives.

An input is a folder of crops, a manifest CSV, or a video with a MOT box file (the sources of
``partreid extract``); ``--camera`` names the camera and ``--start-time`` (ISO 8601) the time of
the first frame, ``--fps`` turns frame numbers into times (a video's own rate by default). A
manifest with a ``timestamp`` column (ISO 8601 or seconds since the epoch; the one manifest
reader, :func:`partreid.data.list_files.read_manifest_rows`, with its optional ``camera``,
``track_id``, ``frame``, ``pid`` columns) gives every crop its own time and camera.

Every crop has a stable id (a hash of camera, source file, frame, track and box), so ingesting
the same input twice adds nothing, and an ingest killed midway resumes where it stopped: the
items already in the store are skipped before any image is decoded or any feature computed. The
store adds each batch atomically. A store remembers the model it was built with (its
fingerprint, :meth:`partreid.inference.ModelInfo.fingerprint`) and refuses features of another
(the one rule of :mod:`partreid.utils.model_match`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..data.sources import Source, open_source, video_frame_rate
from ..deploy.runtime import build_extractor
from ..errors import InvalidValueError
from ..inference import Extractor, is_exported
from ..inference.stream import iter_batches
from ..store import CropBatch, GalleryStore, open_store
from ..store.link import link_store, read_transitions
from ..store.query import camera_id
from ..utils.cache import cache_dir
from ..utils.logs import setup_logging
from ..utils.model_match import ModelDescription, ModelMismatchError, check_same_model
from ..utils.times import parse_time

log = logging.getLogger("partreid")

ADD_ROWS = 256  # crops per store transaction (one fsync each)
MAX_FPS = 1000.0


def crop_ids(src: Source, camera: np.ndarray) -> np.ndarray:
    """Stable int63 ids: a hash of camera, absolute source path, frame, track id and box."""
    out = np.empty(len(src), np.int64)
    for i, path in enumerate(src.paths):
        box = ",".join("nan" if np.isnan(v) else f"{v:.1f}" for v in src.boxes[i])
        key = f"{camera[i]}|{os.path.abspath(path)}|{src.frames[i]}|{src.track_ids[i]}|{box}"
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF
    return out


@dataclass
class Timing:
    """Where an input's crops are and when they were seen."""

    camera: np.ndarray
    timestamp: np.ndarray


def _camera_column(src: Source, camera: Optional[int]) -> np.ndarray:
    if camera is not None:
        return np.full(len(src), int(camera), np.int64)
    if src.cameras is not None and (src.cameras >= 0).all():  # a manifest's camera column
        return src.cameras.astype(np.int64)
    if (src.camids >= 0).all() and len(src):  # Market-style names / manifest camid (0-based)
        return src.camids.astype(np.int64) + 1
    if src.kind == "manifest":
        raise InvalidValueError(
            f"{src.location}: rows without a camera; add a camera column or give --camera ID"
        )
    raise InvalidValueError(
        f"{src.location}: which camera? give --camera ID (the file names do not say)"
    )


def source_timing(
    src: Source, camera: Optional[int], start_time: Optional[str], fps: Optional[float]
) -> Timing:
    """Camera and timestamp of every item of a folder, manifest or video source."""
    cam = _camera_column(src, camera)
    if src.timestamps is not None:  # a manifest's timestamp column
        return Timing(cam, src.timestamps.astype(np.float64))
    if start_time is None:
        raise InvalidValueError(
            f"{src.location}: when was it recorded? give --start-time (ISO 8601, the time of "
            "the first frame), or a CSV with a timestamp column"
        )
    t0 = parse_time(start_time, "--start-time")
    if src.kind != "video":
        return Timing(cam, np.full(len(src), t0, np.float64))
    rate = float(fps) if fps else video_frame_rate(src.location)
    if not rate or rate <= 0:
        raise InvalidValueError(
            f"{src.location}: the video does not say its frame rate; give --fps"
        )
    return Timing(cam, t0 + (src.frames.astype(np.float64) - 1.0) / rate)  # MOT frames from 1


def open_timed_source(
    source: str,
    boxes: Optional[str],
    camera: Optional[int],
    start_time: Optional[str],
    fps: Optional[float],
) -> Tuple[Source, Timing]:
    """The input's items with their cameras and times (see the module docstring)."""
    camera = camera_id(camera, "--camera")  # a camera the filters can name: 0..2^63-1
    if fps is not None and not (math.isfinite(float(fps)) and 0 < float(fps) <= MAX_FPS):
        raise InvalidValueError(f"--fps {fps}: expected frames per second in (0, {MAX_FPS}]")
    src = open_source(source, boxes)
    return src, source_timing(src, camera, start_time, fps)


def model_description(extractor: Extractor) -> Dict[str, Any]:
    """What a store records about the model whose features it holds."""
    info = extractor.info
    model = ModelDescription.of_model(info, extractor.feature_dim, extractor.source_path)
    return {**model.to_record(), "dataset": info.dataset, "flip": bool(extractor.flip)}


def open_store_for(uri: str, model: Dict[str, Any]) -> GalleryStore:
    """Open (or create) ``uri`` for features of ``model``; another model is refused
    (:func:`partreid.utils.model_match.check_same_model`)."""
    store = open_store(uri, create=True, info={"dim": model["feature_dim"], "model": model})
    try:
        check_same_model(
            ModelDescription.from_record(store.info.get("model"), store.dim),
            f"store {store.uri}",  # (without its password)
            ModelDescription.from_record(model),
            "the checkpoint",
            "ingest with the store's model, or into a new store",
        )
    except ModelMismatchError:
        store.close()
        raise
    return store


def _runs(missing: np.ndarray) -> Iterator[Tuple[int, int]]:
    """``(start, stop)`` of every run of True in ``missing``."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], missing.astype(np.int8), [0]])))
    yield from zip(edges[0::2].tolist(), edges[1::2].tolist())


def _batch(src: Source, timing: Timing, ids: np.ndarray, idx: np.ndarray, feats) -> CropBatch:
    boxes = src.boxes[idx].astype(np.float32)
    xyxy = np.where(
        np.isnan(boxes), 0.0, np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1)
    )
    return CropBatch(
        ids=ids[idx],
        features=feats,
        camera=timing.camera[idx],
        timestamp=timing.timestamp[idx],
        track_id=src.track_ids[idx],
        frame=src.frames[idx],
        box=xyxy.astype(np.float32),
        path=[src.paths[i] for i in idx],
        pid=src.pids[idx],
    )


@dataclass
class IngestReport:
    """What one ingest did."""

    items: int = 0
    added: int = 0
    already: int = 0
    unreadable: List[str] = field(default_factory=list)
    seconds: float = 0.0
    store_seconds: float = 0.0


def ingest(extractor: Extractor, store: GalleryStore, src: Source, timing: Timing) -> IngestReport:
    """Add every item of ``src`` that the store lacks, in atomic batches of ``ADD_ROWS``."""
    t0 = time.time()
    ids = crop_ids(src, timing.camera)
    missing = ~store.contains(ids)
    rep = IngestReport(items=len(src), already=int((~missing).sum()))
    pending: List[Tuple[np.ndarray, np.ndarray]] = []

    def flush() -> None:
        t = time.time()
        idx = np.concatenate([i for i, _ in pending])
        rep.added += store.add(
            _batch(src, timing, ids, idx, np.concatenate([f for _, f in pending]))
        )
        rep.store_seconds += time.time() - t
        pending.clear()

    for start, stop in _runs(missing):
        for feats, kept, failed in iter_batches(extractor, src, start, stop, desc="ingest"):
            rep.unreadable += [f"{src.paths[i]}: {e}" for i, e in failed]
            if len(kept):
                pending.append((kept, feats))
            if sum(len(i) for i, _ in pending) >= ADD_ROWS:
                flush()
    if pending:
        flush()
    rep.seconds = time.time() - t0
    return rep


def ingest_command(
    checkpoint: str,
    source: str,
    store_uri: str,
    boxes: Optional[str] = None,
    camera: Optional[int] = None,
    start_time: Optional[str] = None,
    fps: Optional[float] = None,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int = 2,
    progress: bool = True,
    link: bool = False,
    transitions: Optional[str] = None,
    runtime: str = "torch",
) -> IngestReport:
    """``partreid ingest CKPT INPUT --store STORE``: the whole command; with ``link``, the
    store's tracklets are linked into site identities afterwards (``partreid link``).

    ``runtime``: ``torch`` runs the checkpoint in PyTorch; ``onnx`` / ``auto`` as ``partreid
    serve`` (:func:`partreid.deploy.runtime.build_extractor`; the checked export is cached in
    ``~/.cache/partreid/ingest``); an exported ``.onnx`` / ``.xml`` as CKPT runs in its own
    runtime whatever this says.
    """
    setup_logging()
    if transitions and not link:
        raise InvalidValueError("--transitions is for linking: give --link with it")
    moves = read_transitions(transitions) if transitions else None
    src, timing = open_timed_source(source, boxes, camera, start_time, fps)
    if runtime == "torch" or is_exported(checkpoint):
        ext = Extractor(checkpoint, device=device, batch_size=batch_size, num_workers=num_workers)
    else:
        ext, _ = build_extractor(
            checkpoint, cache_dir("ingest"), runtime, device, batch_size, num_workers
        )
    ext.progress = bool(progress)
    with open_store_for(store_uri, model_description(ext)) as store:
        shown = store.uri  # the URI without its password, for the log below
        store.repair(np.unique(timing.camera).tolist())  # what a killed run left half done
        rep = ingest(ext, store, src, timing)
        linked = link_store(store, transitions=moves) if link else None
        total = store.stats()
    if rep.unreadable:
        shown = "\n  ".join(rep.unreadable[:20])
        log.warning(
            "%d item(s) could not be read and were left out:\n  %s", len(rep.unreadable), shown
        )
    log.info(
        "%s: %d crop(s), %d added, %d already in the store, %d unreadable, in %.1f s "
        "(%.1f crops/s; %.1f%% of it in the store); %s now holds %d crops in %d tracklets",
        source,
        rep.items,
        rep.added,
        rep.already,
        len(rep.unreadable),
        rep.seconds,
        rep.added / max(rep.seconds, 1e-9),
        100.0 * rep.store_seconds / max(rep.seconds, 1e-9),
        shown,
        total.crops,
        total.tracklets,
    )
    if linked is not None:
        log.info(
            "linked %d tracklet(s) in %.1f s: %d people (%d new), %d merge(s); threshold %s",
            linked.tracklets,
            linked.seconds,
            linked.identities,
            linked.new_identities,
            len(linked.merges),
            linked.threshold_how,
        )
    return rep
