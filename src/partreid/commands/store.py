"""``partreid store delete`` and ``partreid store stats``: forgetting on request, and what a
store holds. Nothing here loads a model (``store stats`` answers without importing torch)."""

from __future__ import annotations

import json
import logging
from typing import Optional

from ..store import StoreStats, open_store
from ..store.query import camera_id, track_ref
from ..utils.logs import setup_logging
from ..utils.times import format_time, parse_time

log = logging.getLogger("partreid")


def delete_command(
    store_uri: str,
    before: Optional[str] = None,
    camera: Optional[int] = None,
    track: Optional[str] = None,
) -> int:
    """``partreid store delete STORE --before T / --camera C / --track ID``."""
    setup_logging()
    t_before = parse_time(before, "--before") if before else None
    camera = camera_id(camera, "--camera")
    ref = track_ref(track, camera)
    with open_store(store_uri) as store:
        n = store.delete(before=t_before, camera=camera, track=ref)
        left = store.stats()
    log.info("deleted %d crop(s) from %s; %d left", n, store_uri, left.crops)
    return n


def stats_command(store_uri: str, as_json: bool = False) -> StoreStats:
    """``partreid store stats STORE``: counts per camera, time span, dimension, model."""
    with open_store(store_uri) as store:
        st = store.stats()
    if as_json:
        print(json.dumps(st.to_dict(), indent=1, default=str))
        return st
    model = st.model or {}
    span = f"{format_time(st.first)} .. {format_time(st.last)}" if st.first is not None else "empty"
    print(f"store     {store_uri} ({st.backend})")
    print(f"crops     {st.crops} in {st.tracklets} tracklets")
    print(f"span      {span}")
    print(f"features  {st.dim}-d, model {model.get('name')} ({model.get('checkpoint')})")
    for cam, n in sorted(st.cameras.items()):
        print(f"camera {cam:<4}{n:8d} crops")
    return st
