"""``partreid store delete`` and ``partreid store stats``: forgetting on request, and what a
store holds. Nothing here loads a model (``store stats`` answers without importing torch)."""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, Optional

from ..store import open_store
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
    log.info("deleted %d crop(s) from %s; %d left", n, store_uri, left.get("crops", 0))
    return n


def stats_command(store_uri: str, as_json: bool = False) -> Dict[str, Any]:
    """``partreid store stats STORE``: counts per camera, time span, dimension, model."""
    with open_store(store_uri) as store:
        st = store.stats()
    if as_json:
        print(json.dumps(st, indent=1, default=str))
        return st
    model = st.get("model") or {}
    span = (
        f"{format_time(st['first'])} .. {format_time(st['last'])}"
        if st.get("first") is not None
        else "empty"
    )
    print(f"store     {store_uri} ({st.get('backend', '?')})")
    print(f"crops     {st.get('crops', 0)} in {st.get('tracklets', 0)} tracklets")
    print(f"span      {span}")
    print(f"features  {st.get('dim')}-d, model {model.get('name')} ({model.get('checkpoint')})")
    for cam, n in sorted((st.get("cameras") or {}).items()):
        print(f"camera {cam:<4}{n:8d} crops")
    return st
