"""``partreid store delete`` and ``partreid store stats``: forgetting on request, and what a
store holds. Nothing here loads a model (``store stats`` answers without importing torch)."""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

from ..errors import InvalidValueError
from ..store import StoreStats, open_store, redact
from ..store.identity import identity_counts, identity_id
from ..store.query import camera_id, parse_cameras, track_ref
from ..utils.logs import setup_logging
from ..utils.times import format_time, parse_time

log = logging.getLogger("partreid")


def delete_command(
    store_uri: str,
    before: Optional[str] = None,
    camera: Optional[int] = None,
    track: Optional[str] = None,
    identity: Optional[int] = None,
) -> int:
    """``partreid store delete STORE --before T / --camera C / --track ID / --identity I``."""
    setup_logging()
    if identity is not None:
        return _delete_identity(store_uri, identity, before, camera, track)
    t_before = parse_time(before, "--before") if before else None
    camera = camera_id(camera, "--camera")
    ref = track_ref(track, camera)
    with open_store(store_uri) as store:
        n = store.delete(before=t_before, camera=camera, track=ref)
        left = store.stats()
    log.info("deleted %d crop(s) from %s; %d left", n, redact(store_uri), left.crops)
    return n


def _delete_identity(store_uri: str, identity: Any, before: Any, camera: Any, track: Any) -> int:
    """``--identity I``: forget a person everywhere (alone: no other condition with it)."""
    if before is not None or camera is not None or track is not None:
        raise InvalidValueError(
            "--identity forgets a person everywhere: give it alone (not with --before, --camera"
            " or --track)"
        )
    ident = identity_id(identity)
    with open_store(store_uri) as store:
        n = store.delete_identity(ident)
        left = store.stats()
    log.info(
        "deleted identity %d: %d crop(s) and their tracklets from %s; %d crop(s) left",
        ident,
        n,
        redact(store_uri),
        left.crops,
    )
    return n


def stats_command(
    store_uri: str,
    as_json: bool = False,
    cameras: Optional[str] = None,
    after: Optional[str] = None,
    before: Optional[str] = None,
) -> StoreStats:
    """``partreid store stats STORE``: counts per camera, time span, dimension, model, and
    the site identities the tracklets show (within ``--cameras/--after/--before`` if given)."""
    cams = parse_cameras(cameras)
    t_after = parse_time(after, "--after") if after else None
    t_before = parse_time(before, "--before") if before else None
    with open_store(store_uri) as store:
        st = store.stats()
        people = identity_counts(store, cams, t_after, t_before)
    st.extra["identities"] = people
    if as_json:
        print(json.dumps(st.to_dict(), indent=1, default=str))
        return st
    model = st.model or {}
    span = f"{format_time(st.first)} .. {format_time(st.last)}" if st.first is not None else "empty"
    window = ""
    if cams is not None or t_after is not None or t_before is not None:
        window = f" (tracklets of cameras {cameras or 'all'}, {after or '..'} .. {before or '..'})"
    print(f"store     {redact(store_uri)} ({st.backend})")
    print(f"crops     {st.crops} in {st.tracklets} tracklets")
    print(f"span      {span}")
    print(f"features  {st.dim}-d, model {model.get('name')} ({model.get('checkpoint')})")
    print(
        f"people    {people['identities']} site identities{window};"
        f" {people['unlinked_tracklets']} of {people['tracklets']} tracklets not linked"
    )
    for cam, n in sorted(st.cameras.items()):
        who = people["per_camera"].get(cam, 0)
        print(f"camera {cam:<4}{n:8d} crops {who:6d} identities")
    return st
