"""``partreid search --store``: the questions an investigator asks a store ("where else was
this person between 14:00 and 15:30, on cameras 3-7?"), by a stored tracklet, an image or a
folder of images of one person."""

from __future__ import annotations

import csv
import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..data.io import list_image_files
from ..errors import InvalidValueError, NotFoundError
from ..inference import Extractor
from ..store import GalleryStore, open_store, redact
from ..store.identity import search_identities
from ..store.query import check_topk, parse_cameras, search_store, tracklet_id
from ..store.query import records as hit_records
from ..utils.logs import setup_logging
from ..utils.model_match import ModelDescription, check_same_model
from ..utils.times import format_time, parse_time

log = logging.getLogger("partreid")

MAX_QUERY_IMAGES = 1000  # crops of one query person (a folder), each through the model


def _normalised_mean(feats: np.ndarray) -> np.ndarray:
    f = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    m = f.mean(0)
    return (m / max(float(np.linalg.norm(m)), 1e-12))[None, :].astype(np.float32)


def query_feature(
    store: GalleryStore,
    query: Optional[str],
    tracklet: Optional[str],
    checkpoint: Optional[str],
    device: str = "auto",
    batch_size: int = 64,
) -> Tuple[np.ndarray, str]:
    """The query as one feature row and a description: a stored tracklet, one image, or a
    folder of images of one person (a query tracklet: the mean of their normalised features)."""
    if tracklet:
        feat, meta = store.get_tracklet(tracklet)
        span = (
            f"{format_time(meta['start'])} .. {format_time(meta['end'])}" if "start" in meta else ""
        )
        what = f"tracklet {tracklet} (camera {meta.get('camera')}, {meta.get('n_crops')} crops, {span})"
        return np.asarray(feat, np.float32)[None, :], what
    if not query:
        raise InvalidValueError("give a query image or folder, or --tracklet CAMERA:TRACK")
    if not os.path.exists(query):
        raise NotFoundError(f"query not found: {query} (an image, a folder of images)")
    ckpt = checkpoint or (store.info.get("model") or {}).get("checkpoint")
    if not ckpt or not os.path.exists(ckpt):
        raise NotFoundError(
            f"the store's model {ckpt!r} is not here; give --checkpoint CKPT (the model the "
            "store was built with)"
        )
    ext = Extractor(ckpt, device=device, batch_size=batch_size, num_workers=0, progress=False)
    check_same_model(
        ModelDescription.from_record(store.info.get("model"), store.dim),
        f"store {store.uri}",
        ModelDescription.of_model(ext.info, ext.feature_dim, ext.source_path),
        "the query's checkpoint",
        "give --checkpoint the model the store was built with (or leave it out: the store "
        "names its own)",
    )
    paths = list_image_files(query, limit=MAX_QUERY_IMAGES)[0] if os.path.isdir(query) else [query]
    if not paths:
        raise NotFoundError(f"no images under {query}")
    if len(paths) > MAX_QUERY_IMAGES:
        raise InvalidValueError(
            f"query {query} holds more than {MAX_QUERY_IMAGES} images; a query is one person: at most "
            f"{MAX_QUERY_IMAGES} (pick the crops of that person into a folder of their own)"
        )
    return _normalised_mean(ext(paths)), f"{len(paths)} image(s) of {query}"


def _write(path: str, records: List[Dict[str, Any]], header: Dict[str, Any]) -> None:
    if path.lower().endswith(".csv"):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["rank"])
            w.writeheader()
            for r in records:  # lists (a box, a route) as JSON text
                w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    else:
        with open(path, "w") as f:
            json.dump({**header, "results": records}, f, indent=1)


def _print(records: List[Dict[str, Any]], by: str) -> None:
    for r in records:
        if by == "identity":
            who = "not linked" if r["identity"] is None else f"identity {r['identity']}"
            cams = " -> ".join(str(c) for c in r["cameras"])
            print(
                f"{r['rank']:3d}  {r['distance']:.4f}  {who}: cameras {cams}, {r['start']} .. {r['end']}"
            )
            for step in r["route"]:
                print(
                    f"       camera {step['camera']:<4d} tracklet {step['tracklet']:<12s} "
                    f"{step['start']} .. {step['end']}  {step['n_crops']:4d} crops  "
                    f"distance {step['distance']:.4f}"
                )
        elif by == "tracklet":
            print(
                f"{r['rank']:3d}  {r['distance']:.4f}  camera {r['camera']:<4d} tracklet "
                f"{r['tracklet']:<12s} {r['start']} .. {r['end']}  {r['n_crops']:4d} crops  "
                f"best {r.get('best_path', '')} frame {r.get('best_frame', -1)}"
            )
        else:
            print(
                f"{r['rank']:3d}  {r['distance']:.4f}  camera {r['camera']:<4d} {r['time']}  "
                f"tracklet {r['tracklet']:<12s} frame {r['frame']:<6d} {r['path']}"
            )


def search_store_command(
    store_uri: str,
    query: Optional[str],
    topk: int = 10,
    by: str = "tracklet",
    cameras: Optional[str] = None,
    after: Optional[str] = None,
    before: Optional[str] = None,
    tracklet: Optional[str] = None,
    checkpoint: Optional[str] = None,
    out: Optional[str] = None,
    device: str = "auto",
) -> List[Dict[str, Any]]:
    """``partreid search --store STORE QUERY``: print or write the filtered top-K."""
    setup_logging()
    cams = parse_cameras(cameras)
    t_after = parse_time(after, "--after") if after else None
    t_before = parse_time(before, "--before") if before else None
    topk = check_topk(topk)
    tracklet = tracklet_id(tracklet) if tracklet else None
    with open_store(store_uri) as store:
        feature, what = query_feature(store, query, tracklet, checkpoint, device)
        if by == "identity":  # people with their routes (the query's own person first)
            hits: List[Any] = search_identities(store, feature, topk, cams, t_after, t_before)
        else:
            hits = search_store(store, feature, topk, by, cams, t_after, t_before, tracklet)
    records = hit_records(hits)
    header = {
        "store": redact(store_uri),
        "query": what,
        "by": by,
        "cameras": None if cams is None else [list(r) for r in cams],  # [[first, last], ...]
        "after": format_time(t_after) if t_after is not None else None,
        "before": format_time(t_before) if t_before is not None else None,
        "topk": topk,
    }
    if out:
        _write(out, records, header)
        log.info("%d result(s) for %s -> %s", len(records), what, out)
    else:
        _print(records, by)
    return records
