"""``partreid link STORE`` (site identities across cameras) and ``partreid store tracklets``
(the tracklets with their identities, as CSV or JSON). No model, no torch."""

from __future__ import annotations

import csv
import json
import logging
from typing import Any, Dict, List, Optional

from ..errors import InvalidValueError
from ..store import open_store, redact
from ..store.link import K, LinkReport, link_store, read_transitions
from ..store.query import parse_cameras
from ..utils.logs import setup_logging
from ..utils.times import parse_time

log = logging.getLogger("partreid")

TRACKLET_COLUMNS = ["camera", "track_id", "start", "end", "n", "identity", "tracklet"]


def _times(after: Optional[str], before: Optional[str]) -> tuple:
    t_after = parse_time(after, "--after") if after else None
    t_before = parse_time(before, "--before") if before else None
    if t_after is not None and t_before is not None and t_before <= t_after:
        raise InvalidValueError(f"--before {before} is not later than --after {after}")
    return t_after, t_before


def link_command(
    store_uri: str,
    cameras: Optional[str] = None,
    after: Optional[str] = None,
    before: Optional[str] = None,
    transitions: Optional[str] = None,
    threshold: Optional[float] = None,
    k: Optional[int] = None,
    as_json: bool = False,
    center: bool = True,
) -> LinkReport:
    """``partreid link STORE``: give the tracklets in scope their site identities
    (``center``: each camera's mean feature taken out first, ``--no-center`` to keep it)."""
    setup_logging()
    cams = parse_cameras(cameras)
    t_after, t_before = _times(after, before)
    moves = read_transitions(transitions) if transitions else None
    with open_store(store_uri) as store:
        report = link_store(store, cams, t_after, t_before, moves, threshold, k or K, center)
    if as_json:
        print(json.dumps(report.to_dict(), indent=1))
        return report
    print(
        f"linked    {report.tracklets} tracklet(s) of {redact(store_uri)} in {report.seconds:.1f} s"
    )
    print(f"people    {report.identities} ({report.new_identities} new)")
    print(f"changed   {report.changed} tracklet(s) given an identity or a new one")
    for absorbed, into in report.merges:
        print(f"merged    identity {absorbed} into {into} (recorded in the store)")
    print(f"refused   {report.refused} merge(s) the rules did not allow")
    print(f"threshold {report.threshold_how}")
    return report


def _write_table(path: str, records: List[Dict[str, Any]], header: Dict[str, Any]) -> None:
    low = path.lower()
    if low.endswith(".csv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=TRACKLET_COLUMNS)
            w.writeheader()
            w.writerows(
                {**r, "identity": "" if r["identity"] is None else r["identity"]} for r in records
            )
    elif low.endswith(".json"):
        with open(path, "w", encoding="utf-8") as f:
            json.dump({**header, "tracklets": records}, f, indent=1)
    else:
        raise InvalidValueError(f"--out {path}: expected a .csv or .json file")


def tracklets_command(
    store_uri: str,
    out: str,
    identity: Optional[int] = None,
    cameras: Optional[str] = None,
    after: Optional[str] = None,
    before: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """``partreid store tracklets STORE [--identity I] --out FILE.csv|json``."""
    setup_logging()
    if not str(out).lower().endswith((".csv", ".json")):
        raise InvalidValueError(f"--out {out}: expected a .csv or .json file")
    if identity is not None and int(identity) < 1:
        raise InvalidValueError(f"--identity {identity}: identities are ids >= 1")
    cams = parse_cameras(cameras)
    t_after, t_before = _times(after, before)
    who = None if identity is None else [int(identity)]
    with open_store(store_uri) as store:
        table = store.tracklets(cams, t_after, t_before, identities=who)
    records = table.records()
    header = {"store": redact(store_uri), "identity": identity}
    _write_table(out, records, header)
    log.info("%d tracklet(s) of %s -> %s", len(records), redact(store_uri), out)
    return records
