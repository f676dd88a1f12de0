"""The Milvus gallery store: Milvus Lite (a local file, in this process) or a Milvus server.

    milvus:///abs/path/site.db                          Milvus Lite, MilvusClient("/abs/path/site.db")
    milvus://[user:pw@]host:19530[/collection][?...]    a server (URI options: milvus_uri.py)

Collections named after the prefix (``partreid`` unless the URI gives one): ``{prefix}_crops``
(pk ``id``; camera, timestamp, track_id, frame, x1..y2, path, pid, tracklet and the normalised
``vector``), ``{prefix}_tracklets`` (pk ``key`` = the tracklet id; camera, track_id, n, start,
end, ``norm`` = |sum of its normalised crop features| and ``vector`` = the normalised mean),
``{prefix}_cameras`` (pk ``camera``; the ``first`` / ``last`` timestamp of its crops and
their count), ``{prefix}_meta`` (row 0: the ``info`` JSON; row 1: the vector index; negative
rows: the journal of writes in progress) and, once site identities are given,
``{prefix}_identities`` / ``{prefix}_identity_log``. A new Milvus Lite store's folder is made
0700 (the owner's only); a looser one gets a warning.

Indexes: a server store's vectors get the URI's index (HNSW by default, its parameters
recorded in row 1), its filter fields scalar indexes (camera, timestamp, tracklet; the
tracklets' camera, start, end); Milvus Lite keeps FLAT (exact). Milvus itself indexes each
sealed segment of at least 1,024 rows and searches smaller ones exhaustively.

Exact where the filtered subset is small: with an ANN index a search first counts the rows its
filter keeps (``count(*)``, on the scalar indexes). Up to ``exact`` rows (URI option, default
4,096) it asks Milvus for *all* of them, ranked (HNSW falls back to an exhaustive scan under a
filter that keeps few rows); a full answer is the exact ranking, checked by its size, else the
rows' vectors are fetched and ranked here. Larger subsets get the ANN answer (``ef``/``nprobe``).

Consistency: a server handle reads with a guarantee timestamp: the time it opened, moved on by
each of its own writes. So it reads its own writes and everything written before it opened
(a search after an ingest sees it), waiting at most one time tick (~0.2-0.4 s) on its first
read and after a write, never a full sync (``Strong``) on every call; writes of other processes
after it opened appear within a time tick. (The timestamps come from this machine's clock:
keep the clients' and the server's clocks in sync.)

Writers: several processes may add at once, one per camera (crop ids and tracklet ids include
the camera, so they never touch the same rows; they may make the store at the same time). An
add writes, in order: a journal row naming the batch's cameras and tracklets, the cameras' rows
(spans widened, counts grown), the crops, the tracklets (the stored sum plus the batch's), then
deletes its journal row. A writer killed in between leaves the journal row; the next add or
:meth:`repair` touching those cameras (re-running the ingest does both) rebuilds those
tracklets and cameras' rows from their crops, exactly. A delete journals the same way. Stats
read no crop: a server counts each camera's crops with ``count(*)``, Milvus Lite (one process)
keeps the counts in the cameras' rows.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from partreid.store import base
from partreid.store.base import (
    CameraFilter,
    Hit,
    StoreError,
    TrackletHit,
    camera_ranges,
    chunks,
    normalize,
    to_distance,
)
from partreid.store.milvus_uri import (
    MAX_LIMIT,
    IndexSpec,
    MilvusTarget,
    parse_milvus_uri,
)
from partreid.utils.extras import require
from partreid.utils.private import make_private_dir, warn_loose_modes

log = logging.getLogger("partreid")

CONNECT_TIMEOUT = 5.0  # seconds before an unreachable server is reported
MARGIN = 16  # extra candidates so that ties at rank k sort by id
STALE_S = 600.0  # a journal row this old belongs to a dead writer, whatever its cameras
CHECK_ROWS = 200_000  # the most rows check_recall ranks exactly
_INSERT_ROWS = 1000  # rows per insert call (gRPC messages stay well under 64 MB at 3,072-d)
_IN_CHUNK = 4096  # values per "in [...]" expression
_PAGE = 8192  # rows per page of a query that reads many
_WITH_FIELDS = 512  # an exact search of up to this many rows asks for their fields at once
_JOURNAL_CHARS = 60000  # tracklet ids per journal row, in characters (VARCHAR 65,535)
_CROP_FIELDS = [
    "id",
    "camera",
    "timestamp",
    "track_id",
    "frame",
    "x1",
    "y1",
    "x2",
    "y2",
    "path",
    "pid",
]
_TR_FIELDS = ["key", "camera", "track_id", "n", "start", "end", "norm"]
Span = Tuple[float, float, int]  # a camera's first and last timestamp, its crop count
# scalar indexes of a server store's filter fields (Milvus 2.3: STL_SORT numbers, Trie text)
_SCALAR = {
    "crops": {"camera": "STL_SORT", "timestamp": "STL_SORT", "tracklet": "Trie"},
    "tracklets": {"camera": "STL_SORT", "start": "STL_SORT", "end": "STL_SORT"},
}


def open_milvus(uri: str, create: bool, info: Optional[Dict[str, Any]]) -> MilvusStore:
    """Open the Milvus (Lite or server) store named by a ``milvus://`` URI."""
    return MilvusStore(uri, create=create, info=info)


def _in(values: Sequence[Any]) -> str:
    return "[" + ",".join(json.dumps(v) for v in values) + "]"


def _now_ts() -> int:
    """A Milvus hybrid timestamp of now (physical milliseconds << 18)."""
    return int(time.time() * 1000) << 18


def milvus_message(e: BaseException) -> str:
    """A Milvus or gRPC error as one short line (its ``message``, else the text)."""
    msg = getattr(e, "message", None) or str(e) or type(e).__name__
    return " ".join(str(msg).split())[:300]


def _unauthenticated(e: BaseException) -> bool:
    """Whether the server refused the credentials (gRPC UNAUTHENTICATED in the cause chain)."""
    seen = 0
    while e is not None and seen < 10:
        code = getattr(e, "code", None)
        if callable(code) and "UNAUTHENTICATED" in str(code()):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def connect(pm: Any, t: MilvusTarget) -> Any:
    """A MilvusClient for the target, or one clear StoreError line (no secret in it)."""
    # pymilvus logs every refused call at ERROR before raising; the StoreError says it once
    logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)
    try:
        if t.kind == "lite":
            return pm.MilvusClient(t.target)
        return pm.MilvusClient(
            uri=f"http://{t.target}", token=t.credentials, timeout=CONNECT_TIMEOUT
        )
    except Exception as e:  # grpc / MilvusException: say where, in one line
        where = (
            f"the Milvus server at {t.target}" if t.kind == "server" else f"Milvus Lite {t.target}"
        )
        if t.kind == "server" and _unauthenticated(e):
            why = (
                "wrong user or password (from the URI or its token_file)"
                if t.credentials
                else "it needs credentials: milvus://USER:PASSWORD@host:port/... or ?token_file=PATH"
            )
            raise StoreError(f"store {t.shown}: {where} refused the login: {why}") from None
        msg = milvus_message(e)
        if t.credentials:
            msg = msg.replace(t.credentials, "***")
        raise StoreError(f"store {t.shown}: cannot connect to {where}: {msg}") from None


class MilvusStore(base.GalleryStore):
    """The gallery in Milvus collections (see the module docstring)."""

    backend = "milvus"

    def __init__(self, uri: str, create: bool = False, info: Optional[Dict[str, Any]] = None):
        t = parse_milvus_uri(uri)
        self.uri = t.shown
        self._t = t
        self._server = t.kind == "server"
        pm = require("pymilvus", "milvus")
        if t.kind == "lite":
            require("milvus_lite", "milvus")
            folder = os.path.dirname(t.target) or "/"
            if not os.path.isdir(folder):
                raise StoreError(f"store {self.uri}: no folder {folder} for the file")
            if not os.path.exists(t.target) and not create:
                raise StoreError(
                    f"store {self.uri}: no Milvus Lite file {t.target} ({base.MAKE_ONE})"
                )
            if not os.path.exists(t.target):  # Milvus Lite keeps its files in it: owner only
                make_private_dir(t.target)
            warn_loose_modes([t.target], f"the gallery store {self.uri}")
        self._pm = pm
        self._c = connect(pm, t)
        self._lock = threading.RLock()
        self._opened = self._seen = _now_ts()  # reads see every write made before opening
        self._journals: set = set()  # this handle's journal rows (see _pending)
        self._loaded: set = set()  # the identity collections, once loaded by this handle
        self._dirty = True  # Lite: rows of an earlier session may be unflushed
        self._crops, self._tr, self._cams, self._meta = (
            f"{t.prefix}_{s}" for s in ("crops", "tracklets", "cameras", "meta")
        )
        try:
            self._open(create, info)
        except BaseException:
            self._c.close()
            self._c = None
            raise

    def _open(self, create: bool, info: Optional[Dict[str, Any]]) -> None:
        meta: Dict[int, Any] = {}
        if self._c.has_collection(self._meta):
            self._load([self._meta])
            rows = self._query(self._meta, "key in [0, 1]", ["key", "info"])
            meta = {int(r["key"]): json.loads(r["info"]) for r in rows}
        if 0 not in meta:  # row 0 is written last: a creation that did not finish is none
            if not create:
                raise StoreError(
                    f"store {self.uri}: no gallery store (collection {self._meta}) there;"
                    f" {base.MAKE_ONE}"
                )
            if info is None:
                raise StoreError(f"store {self.uri}: creating a store needs info with 'dim'")
            meta = self._create(info)
        else:
            if not self._c.has_collection(self._cams):  # a store made before it
                self._make_cameras()
            self._load([self._crops, self._tr, self._cams])
        self.info = meta[0]
        if info is not None and int(info["dim"]) != self.dim:
            raise StoreError(
                f"store {self.uri} holds {self.dim}-d features; asked for dim {int(info['dim'])}"
            )
        recorded = meta.get(1, {}).get("index", {"kind": "FLAT"})  # stores before indexes: FLAT
        self.index = self._t.spec(recorded)
        if self.index.kind != recorded["kind"] or any(
            recorded.get(k) != v for k, v in self.index.build.items()
        ):
            self._reindex(recorded)

    def _load(self, names: List[str]) -> None:
        """Load collections, side by side (a server takes ~2 s for each)."""

        def load(name: str) -> None:
            for attempt in range(20):  # a collection another writer made may lack its index
                try:  # for a few milliseconds more
                    self._c.load_collection(name)
                    return
                except Exception as e:
                    if attempt == 19 or "index" not in str(e).lower():
                        raise
                    time.sleep(0.25)

        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(load, names))

    # -- calls ----------------------------------------------------------------------------

    def _kw(self, own: bool = True) -> Dict[str, Any]:
        """A read's consistency: a server sees what was written before this handle opened
        and, with ``own``, this handle's writes (see the module docstring)."""
        if not self._server:
            return {}
        ts = self._seen if own else self._opened
        return {"consistency_level": "Customized", "guarantee_timestamp": ts}

    def _wrote(self) -> None:
        """After a write: later reads of this handle see it."""
        self._seen = max(self._seen, _now_ts())
        self._dirty = True

    def _query(
        self, coll: str, expr: str, fields: List[str], own: bool = True, **kw: Any
    ) -> List[dict]:
        return self._c.query(coll, filter=expr, output_fields=fields, **self._kw(own), **kw)

    def _count(self, coll: str, expr: str = "") -> int:
        return int(self._query(coll, expr, ["count(*)"])[0]["count(*)"])

    def _search_params(self, limit: int) -> Dict[str, Any]:
        """Milvus search parameters of this store's index for ``limit`` results."""
        s = dict(self.index.search)
        if "ef" in s:
            s["ef"] = max(s["ef"], limit)  # HNSW needs ef >= limit
        return {"metric_type": "IP", "params": s}

    def _vsearch(self, coll: str, data: List[np.ndarray], limit: int, expr: str, fields):
        try:
            return self._c.search(
                coll,
                data=data,
                limit=limit,
                filter=expr,
                output_fields=fields,
                search_params=self._search_params(limit),
                **self._kw(),
            )
        except Exception as e:
            if type(e).__name__ != "MilvusException":
                raise
            raise StoreError(
                f"store {self.uri}: Milvus refused the search ({self.index.record()}):"
                f" {milvus_message(e)}"
            ) from None

    # -- creation and indexes -------------------------------------------------------------

    def _index_params(self, name: str, vector: Optional[IndexSpec], metric: str = "IP") -> Any:
        ip = self._c.prepare_index_params()
        spec = vector or IndexSpec("FLAT")
        ip.add_index("vector", index_type=spec.kind, metric_type=metric, params=spec.build)
        if self._server and vector is not None:
            for fname, kind in _SCALAR.get(name.rsplit("_", 1)[1], {}).items():
                ip.add_index(fname, index_type=kind, index_name=f"{fname}_idx")
        return ip

    def _make(self, name: str, fields: List[Tuple[str, Any, dict]], dim: int, ip: Any) -> None:
        dt = self._pm.DataType
        s = self._c.create_schema(auto_id=False, enable_dynamic_field=False)
        for fname, ftype, kw in fields:
            s.add_field(fname, ftype, **kw)
        s.add_field("vector", dt.FLOAT_VECTOR, dim=dim)
        if self._c.has_collection(name):  # another writer making the store at the same time
            return
        level = "Bounded" if self._server else "Strong"
        self._c.create_collection(name, schema=s, consistency_level=level)
        try:  # checked now, built in the background (a new collection has nothing to build)
            self._c.create_index(name, ip, sync=False)
        except Exception as e:
            if type(e).__name__ != "MilvusException":
                raise
            self._c.drop_collection(name)
            raise StoreError(
                f"store {self.uri}: Milvus refused the index {self.index.record()} of {name}:"
                f" {milvus_message(e)}"
            ) from None

    def _create(self, info: Dict[str, Any]) -> Dict[int, Any]:
        """Make the collections, then the meta's rows (0 last); returns those rows."""
        dt = self._pm.DataType
        info = dict(info)
        info["dim"] = d = int(info["dim"])
        try:
            text = json.dumps(info, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise StoreError(f"store {self.uri}: info is not JSON-able: {e}") from None
        self.index = self._t.spec(None)
        i64, f64, f32 = dt.INT64, dt.DOUBLE, dt.FLOAT
        crops = (
            self._crops,
            [("id", i64, {"is_primary": True})]
            + [(f, i64, {}) for f in ("camera", "track_id", "frame", "pid")]
            + [("timestamp", f64, {})]
            + [(f, f32, {}) for f in ("x1", "y1", "x2", "y2")]
            + [
                ("path", dt.VARCHAR, {"max_length": 4096}),
                ("tracklet", dt.VARCHAR, {"max_length": 64}),
            ],
            d,
            self._index_params(self._crops, self.index),
        )
        tracklets = (
            self._tr,
            [("key", dt.VARCHAR, {"is_primary": True, "max_length": 64})]
            + [(f, i64, {}) for f in ("camera", "track_id", "n")]
            + [(f, f64, {}) for f in ("start", "end", "norm")],
            d,
            self._index_params(self._tr, self.index),
        )
        self._make(*crops)
        self._make(*tracklets)
        self._make_cameras()
        self._make(
            self._meta,
            [("key", i64, {"is_primary": True}), ("info", dt.VARCHAR, {"max_length": 65535})],
            2,
            self._index_params(self._meta, None, "L2"),
        )
        self._load([self._crops, self._tr, self._cams, self._meta])
        rows = {0: info, 1: json.loads(self._settings())}
        self._c.upsert(  # two writers making the store at once: one row each
            self._meta,
            [
                {"key": 1, "info": json.dumps(rows[1]), "vector": [0.0, 0.0]},
                {"key": 0, "info": text, "vector": [0.0, 0.0]},  # last: the store is made
            ],
        )
        self._wrote()
        return rows

    def _settings(self) -> str:
        return json.dumps({"index": self.index.record()}, sort_keys=True)

    def _reindex(self, recorded: Dict[str, Any]) -> None:
        """Rebuild the vector indexes as the URI asks (``reindex=1``), else refuse to."""
        if not self._t.reindex:
            raise StoreError(
                f"store {self.uri} was made with index {recorded}; the URI asks for"
                f" {self.index.record()}: add reindex=1 to rebuild it (searches wait meanwhile)"
            )
        for coll in (self._crops, self._tr):
            self._c.release_collection(coll)
            self._c.drop_index(coll, "vector")
            ip = self._c.prepare_index_params()
            ip.add_index(
                "vector", index_type=self.index.kind, metric_type="IP", params=self.index.build
            )
            try:
                self._c.create_index(coll, ip)
            except Exception as e:
                raise StoreError(
                    f"store {self.uri}: Milvus refused the index {self.index.record()}:"
                    f" {milvus_message(e)}"
                ) from None
            self._c.load_collection(coll)
        self._c.upsert(self._meta, [{"key": 1, "info": self._settings(), "vector": [0.0, 0.0]}])
        self._wrote()

    def _make_cameras(self) -> None:
        """The cameras collection (and, for a store made before it, its rows from the crops)."""
        dt = self._pm.DataType
        fields = [("camera", dt.INT64, {"is_primary": True})]
        fields += [(f, dt.DOUBLE, {}) for f in ("first", "last")] + [("crops", dt.INT64, {})]
        self._make(self._cams, fields, 2, self._index_params(self._cams, None, "L2"))
        if not self._c.has_collection(self._crops) or not self._c.has_collection(self._meta):
            return  # a new store: no crops yet
        self._load([self._crops, self._cams])
        spans: Dict[int, Span] = {}
        for r in self._iterate(self._crops, "", ["camera", "timestamp"]):
            c, t = int(r["camera"]), float(r["timestamp"])
            a, b, n = spans.get(c, (t, t, 0))
            spans[c] = (min(a, t), max(b, t), n + 1)
        self._put_spans(spans)

    # -- add ------------------------------------------------------------------------------

    def _present(self, ids: np.ndarray) -> np.ndarray:
        found: set = set()
        for part in chunks(ids.tolist(), _IN_CHUNK):
            rows = self._query(self._crops, f"id in {_in(part)}", ["id"])
            found.update(int(r["id"]) for r in rows)
        return np.array([i in found for i in ids.tolist()], dtype=bool)

    def _tracklets(self, keys: List[str], fields: List[str]) -> Dict[str, dict]:
        out = {}
        for part in chunks(keys, _IN_CHUNK):
            for r in self._query(self._tr, f"key in {_in(part)}", fields):
                out[r["key"]] = r
        return out

    def _insert(self, new: base.NewCrops) -> None:
        """Spans, journal, crops, tracklets (the stored sum plus the batch's), journal done."""
        batch, feats = new.batch, new.features
        keys = [new.keys[j] for j in new.of_crop.tolist()]
        box = batch.box
        assert box is not None and batch.path is not None
        rows = [
            {
                "id": int(batch.ids[i]),
                "camera": int(batch.camera[i]),
                "timestamp": float(batch.timestamp[i]),
                "track_id": int(batch.track_id[i]),
                "frame": int(batch.frame[i]),
                "x1": float(box[i, 0]),
                "y1": float(box[i, 1]),
                "x2": float(box[i, 2]),
                "y2": float(box[i, 3]),
                "path": batch.path[i],
                "pid": int(batch.pid[i]),
                "tracklet": keys[i],
                "vector": feats[i],
            }
            for i in range(len(batch))
        ]
        # every read first: a server answers the first read after a write when it has caught
        # up with that write (up to a time tick); reads with no write between them wait once
        spans = self._grown_spans(batch.camera, batch.timestamp)
        old = self._tracklets(
            [k for k in new.keys if not k.startswith("crop:")], _TR_FIELDS + ["vector"]
        )
        ups = []
        for j, key in enumerate(new.keys):
            first = int(new.first[j])
            s, m = new.sum(j), int(new.counts[j])
            a, b = float(new.start[j]), float(new.end[j])
            if key in old:
                o = old[key]
                s = s + np.asarray(o["vector"], np.float64) * float(o["norm"])
                m += int(o["n"])
                a, b = min(a, float(o["start"])), max(b, float(o["end"]))
            ups.append(
                self._tracklet_row(key, batch.camera[first], batch.track_id[first], s, m, a, b)
            )
        journal = self._journal("add", sorted(spans), new.keys)  # before any other write
        self._put_spans(spans)
        for part in chunks(rows, _INSERT_ROWS):
            self._c.insert(self._crops, part)
        self._wrote()
        self._update_tracklets(ups)
        self._done(journal)

    def _update_tracklets(self, rows: List[dict]) -> None:
        """Upsert tracklet rows (a separate step: where a crash test stops a writer)."""
        for part in chunks(rows, _INSERT_ROWS):
            self._c.upsert(self._tr, part)
        self._wrote()

    @staticmethod
    def _tracklet_row(
        key: str, cam: Any, trk: Any, s: np.ndarray, n: int, a: float, b: float
    ) -> dict:
        norm = float(np.linalg.norm(s))
        return {
            "key": key,
            "camera": int(cam),
            "track_id": int(trk),
            "n": int(n),
            "start": float(a),
            "end": float(b),
            "norm": norm,
            "vector": (s / max(norm, 1e-12)).astype(np.float32),
        }

    # -- the journal of writes in progress, and repair ------------------------------------

    def _journal(self, op: str, cameras: List[int], keys: Iterable[str]) -> List[int]:
        """Rows naming the tracklets a write is about to change (negative keys)."""
        rows, part, size = [], [], 0
        now = time.time()
        for key in list(keys) + [None]:
            if key is None or size + len(key) > _JOURNAL_CHARS:
                rec = {"op": op, "cameras": [int(c) for c in cameras], "keys": part, "time": now}
                pk = -random.randrange(1, 2**62)
                rows.append({"key": pk, "info": json.dumps(rec), "vector": [0.0, 0.0]})
                part, size = [], 0
            if key is not None:
                part.append(key)
                size += len(key) + 4
        self._c.insert(self._meta, rows)
        self._wrote()
        self._journals.update(r["key"] for r in rows)
        return [r["key"] for r in rows]

    def _done(self, journal: List[int]) -> None:
        self._c.delete(self._meta, filter=f"key in {_in(journal)}")
        self._wrote()

    def _pending(self) -> List[Tuple[int, dict]]:
        """The journal's rows of other handles (a killed writer's were written before this
        handle opened, or, had it still been writing then, before its camera's next writer
        opens: read without waiting for this handle's writes, its own rows left out)."""
        rows = self._query(self._meta, "key < 0", ["key", "info"], own=False)
        rows = [r for r in rows if int(r["key"]) not in self._journals]
        return [(int(r["key"]), json.loads(r["info"])) for r in rows]

    def _repair(self, cameras: Optional[Sequence[int]]) -> int:
        """Finish what killed writers left (their journal rows): the rows touching
        ``cameras``, or with None the rows older than :data:`STALE_S`."""
        want = None if cameras is None else {int(c) for c in cameras}
        now = time.time()
        rows = [
            (pk, rec)
            for pk, rec in self._pending()
            if (want is None and now - rec["time"] > STALE_S)
            or (want is not None and want & set(rec["cameras"]))
        ]
        if not rows:
            return 0
        keys = sorted({k for _, rec in rows for k in rec["keys"]})
        tracklets, gone = self._rebuilt(keys)  # every read first (see _insert)
        spans = self._new_spans(sorted({c for _, rec in rows for c in rec["cameras"]}))
        self._write_tracklets(tracklets, gone)
        self._write_spans(spans)
        self._done([pk for pk, _ in rows])
        return len(keys)

    def _rebuilt(self, keys: List[str]) -> Tuple[List[dict], List[str]]:
        """These tracklets' rows anew from their crops, and the keys with no crop left."""
        left: Dict[str, List[dict]] = {}
        for part in chunks(keys, 256):
            for r in self._iterate(
                self._crops,
                f"tracklet in {_in(part)}",
                ["tracklet", "camera", "track_id", "timestamp", "vector"],
            ):
                left.setdefault(r["tracklet"], []).append(r)
        rows = []
        for key, rs in left.items():
            v = normalize(np.asarray([r["vector"] for r in rs], np.float32)).astype(np.float64)
            t = [float(r["timestamp"]) for r in rs]
            rows.append(
                self._tracklet_row(
                    key, rs[0]["camera"], rs[0]["track_id"], v.sum(0), len(rs), min(t), max(t)
                )
            )
        return rows, [k for k in keys if k not in left]

    def _write_tracklets(self, rows: List[dict], gone: List[str]) -> None:
        has_ids = bool(gone) and self._identity_collections(False)
        for part in chunks(gone, _IN_CHUNK):
            self._c.delete(self._tr, filter=f"key in {_in(part)}")
            if has_ids:  # an emptied tracklet has no identity
                self._c.delete(self._ids, filter=f"key in {_in(part)}")
        self._update_tracklets(rows)

    # -- cameras: their time spans (stats count their crops) ------------------------------

    def _spans(self, cameras: Optional[Sequence[int]] = None) -> Dict[int, Span]:
        """The cameras' rows (every camera's with None)."""
        fields = ["camera", "first", "last", "crops"]
        if cameras is None:
            rows: Iterable[dict] = self._iterate(self._cams, "", fields)
        else:
            rows = self._query(self._cams, f"camera in {_in([int(c) for c in cameras])}", fields)
        return {
            int(r["camera"]): (float(r["first"]), float(r["last"]), int(r["crops"])) for r in rows
        }

    def _put_spans(self, spans: Dict[int, Span]) -> None:
        rows = [
            {"camera": int(c), "first": a, "last": b, "crops": int(n), "vector": [0.0, 0.0]}
            for c, (a, b, n) in spans.items()
        ]
        for part in chunks(rows, _INSERT_ROWS):
            self._c.upsert(self._cams, part)
        self._wrote()

    def _grown_spans(self, camera: np.ndarray, timestamp: np.ndarray) -> Dict[int, Span]:
        """The rows of a batch's cameras once it is added: spans widened, counts grown."""
        cams, inv, counts = np.unique(camera, return_inverse=True, return_counts=True)
        lo = np.full(len(cams), np.inf)
        hi = np.full(len(cams), -np.inf)
        np.minimum.at(lo, inv.reshape(-1), timestamp)
        np.maximum.at(hi, inv.reshape(-1), timestamp)
        old = self._spans(cams.tolist())
        new = {}
        for c, a, b, m in zip(cams.tolist(), lo.tolist(), hi.tolist(), counts.tolist()):
            o = old.get(c)
            new[c] = (a, b, m) if o is None else (min(a, o[0]), max(b, o[1]), o[2] + m)
        return new

    def _edge(self, camera: int, low: bool, start: float) -> float:
        """The lowest (or highest) timestamp of a camera's crops, which lie beyond ``start``
        (its old first or last): windows growing from ``start`` until one holds crops, then
        steps beyond the best so far (16,384 crops each) until none is left. Timestamps only,
        a handful of queries at any size."""
        cam = f"camera == {int(camera)}"
        rows: List[dict] = []
        w = 3600.0
        while not rows and w < 1e12:
            a, b = (start, start + w) if low else (start - w, start)
            rows = self._query(
                self._crops, f"{cam} and timestamp >= {a!r} and timestamp <= {b!r}",
                ["timestamp"], limit=MAX_LIMIT,
            )  # fmt: skip
            w *= 16
        if not rows:  # beyond any window: all of them
            rows = self._query(self._crops, cam, ["timestamp"], limit=MAX_LIMIT)
        pick = min if low else max
        best = pick(float(r["timestamp"]) for r in rows)
        while len(rows) == MAX_LIMIT:
            op = "<" if low else ">"
            rows = self._query(
                self._crops, f"{cam} and timestamp {op} {best!r}", ["timestamp"], limit=MAX_LIMIT
            )
            best = pick([best] + [float(r["timestamp"]) for r in rows])
        return best

    def _edges(self, starts: Dict[int, float], low: bool) -> Dict[int, float]:
        """:meth:`_edge` of many cameras at once: each window is one query for every camera
        still to find while its answer is whole (under Milvus's limit); a camera whose answer
        may be cut, or with no crop within any window, is found on its own."""
        out: Dict[int, float] = {}
        todo = dict(starts)
        pick = min if low else max
        w = 3600.0
        while todo and w < 1e12:
            for part in chunks(sorted(todo), 64):
                terms = []
                for c in part:
                    a, b = (todo[c], todo[c] + w) if low else (todo[c] - w, todo[c])
                    terms.append(f"(camera == {c} and timestamp >= {a!r} and timestamp <= {b!r})")
                rows = self._query(
                    self._crops, " or ".join(terms), ["camera", "timestamp"], limit=MAX_LIMIT
                )
                if len(rows) == MAX_LIMIT:  # maybe cut: each on its own
                    out.update({c: self._edge(c, low, todo.pop(c)) for c in part})
                    continue
                for r in rows:
                    c, t = int(r["camera"]), float(r["timestamp"])
                    out[c] = pick(out.get(c, t), t)
                for c in part:
                    if c in out:
                        todo.pop(c, None)
            w *= 16
        out.update({c: self._edge(c, low, a) for c, a in todo.items()})
        return out

    def _camera_counts(self, cameras: Sequence[int]) -> Dict[int, int]:
        """Each camera's crops by ``count(*)``: 4 at a time on a server (exact while other
        processes write), one after another on Milvus Lite."""

        def count(c: int) -> int:
            return self._count(self._crops, f"camera == {int(c)}")

        if not self._server:
            return {int(c): count(c) for c in cameras}
        with ThreadPoolExecutor(4) as pool:
            return dict(zip((int(c) for c in cameras), pool.map(count, cameras)))

    def _new_spans(
        self,
        cameras: List[int],
        known: Optional[Dict[int, Span]] = None,
        counts: Optional[Dict[int, int]] = None,
    ) -> Dict[int, Optional[Span]]:
        """These cameras' rows found anew from their crops (None: no crop left); ``counts``:
        their crops when known (else counted)."""
        known = self._spans(cameras) if known is None else known
        counts = self._camera_counts(cameras) if counts is None else counts
        left = [int(c) for c in cameras if counts[c] > 0]
        far = (-1e18, 1e18, 0)
        first = self._edges({c: known.get(c, far)[0] for c in left}, True)
        last = self._edges({c: known.get(c, far)[1] for c in left}, False)
        out: Dict[int, Optional[Span]] = {int(c): None for c in cameras}
        out.update({c: (first[c], last[c], counts[c]) for c in left})
        return out

    def _write_spans(self, spans: Dict[int, Optional[Span]]) -> None:
        """Upsert the cameras' rows; delete those of cameras with no crop."""
        gone = [c for c, v in spans.items() if v is None]
        if gone:
            self._c.delete(self._cams, filter=f"camera in {_in(gone)}")
            self._wrote()
        self._put_spans({c: v for c, v in spans.items() if v is not None})

    # -- search ---------------------------------------------------------------------------

    @staticmethod
    def _expr(by: str, cameras: Optional[CameraFilter], after: Any, before: Any) -> str:
        conds = []
        if cameras is not None:  # ids as one list, ranges as bounds: never expanded
            spans = camera_ranges(cameras)
            ids = [a for a, b in spans if a == b]
            terms = [f"camera in {_in(ids)}"] if ids else []
            terms += [f"(camera >= {a} and camera <= {b})" for a, b in spans if a != b]
            conds.append(f"({' or '.join(terms)})" if terms else "camera in [-9223372036854775807]")
        lo, hi = ("timestamp", "timestamp") if by == "crop" else ("end", "start")
        if after is not None:
            conds.append(f"{lo} >= {float(after)!r}")
        if before is not None:
            conds.append(f"{hi} < {float(before)!r}")
        return " and ".join(conds)

    def _search(self, q: np.ndarray, k: int, by: str, flt: base.SearchFilter) -> List[List[Any]]:
        """Filtered inside Milvus; exact on small subsets (see the module docstring)."""
        expr = self._expr(by, flt.cameras, flt.after, flt.before)
        self._seal()
        coll = self._crops if by == "crop" else self._tr
        pk = "id" if by == "crop" else "key"
        exact = None
        if self.index.kind != "FLAT" and self._t.exact_rows > 0:
            n = self._count(coll, expr)
            if n <= self._t.exact_rows:
                exact = self._exact(coll, pk, q, n, expr, k) if n else [[] for _ in q]
        if exact is not None:
            ents = exact
        else:
            res = self._vsearch(coll, list(q), min(k + MARGIN, MAX_LIMIT), expr, self._fields(by))
            ents = [[(_entity(h, pk), float(to_distance(h["distance"]))) for h in hs] for hs in res]
        out: List[List[Any]] = []
        for qi, hs in enumerate(ents):
            if by == "crop":
                crops = [_hit(e, None, d) for e, d in hs]
                crops.sort(key=lambda h: (h.distance, h.id))
                out.append(crops[:k])
                continue
            ts = [_tracklet_hit(e, d) for e, d in hs]
            ts.sort(key=lambda h: (h.distance, h.tracklet))
            ts = ts[:k]
            self._best(q[qi], ts)
            out.append(ts)
        return out

    @staticmethod
    def _fields(by: str) -> List[str]:
        return _CROP_FIELDS if by == "crop" else _TR_FIELDS

    def _exact(
        self, coll: str, pk: str, q: np.ndarray, n: int, expr: str, k: int
    ) -> List[List[Tuple[dict, float]]]:
        """Each query's exact top ``k`` (with their fields) of the ``n`` rows ``expr`` keeps:
        ranked from Milvus's answer for all ``n`` when it is complete (its size says so), else
        from the rows' vectors, ranked here. Up to :data:`_WITH_FIELDS` rows come with their
        fields at once; for more, the top ``k``'s are fetched after."""
        fields = self._fields("crop" if coll == self._crops else "tracklet")
        res = self._vsearch(coll, list(q), n, expr, fields if n <= _WITH_FIELDS else [pk])
        ents: Dict[Any, dict] = {}
        if all(len(hs) == n for hs in res):
            ranked = []
            for hs in res:
                ranked.append(
                    sorted(((h["id"], float(to_distance(h["distance"]))) for h in hs), key=_by_d)
                )
                if n <= _WITH_FIELDS:
                    ents.update((h["id"], _entity(h, pk)) for h in hs)
        else:  # the index did not reach every row: rank them here
            rows = self._query(coll, expr, [*fields, "vector"], limit=n)
            v = np.asarray([r["vector"] for r in rows], np.float32)
            d = to_distance(q @ v.T)
            ents = {r[pk]: r for r in rows}
            ranked = [sorted(zip(ents, di.tolist()), key=_by_d) for di in d]
        ranked = [r[:k] for r in ranked]  # the whole ranking, ties by id: the top k is exact
        want = sorted({i for r in ranked for i, _ in r if i not in ents}, key=str)
        for part in chunks(want, _IN_CHUNK):
            for e in self._query(coll, f"{pk} in {_in(part)}", fields):
                ents[e[pk]] = e
        return [[(ents[i], d) for i, d in r if i in ents] for r in ranked]

    def _seal(self) -> None:
        """Milvus Lite: flush after writes, once, before the next search.

        Milvus Lite searched its unflushed (growing) segments ~15x slower (800 ms vs 50 ms at
        3k x 1,280-d), while a flush costs ~0.5 s: so adds stay cheap and the first search
        after them pays once. A server searches growing segments well: no flush there.
        """
        if self._dirty and not self._server:
            self._c.flush(self._crops)
            self._c.flush(self._tr)
        self._dirty = False

    def _best(self, query: np.ndarray, hits: List[TrackletHit]) -> None:
        """Set each hit's ``best``: its crop nearest the query, exact, ties by id.

        The hits' crops come from a filtered vector *search* on the crops (limit: one more than
        the hits' crop count), not a ``query``: Milvus Lite answered the same ``tracklet in
        [...]`` filter ~3x faster that way (16-23 ms against 43-59 ms at 20k x 1,280). An
        answer of exactly the counted crops is complete; any other size (counts that are off,
        an index that missed one) falls back to a full query. Distances are recomputed here.
        """
        if not hits:
            return
        expr = f"tracklet in {_in([h.tracklet for h in hits])}"
        fields = _CROP_FIELDS + ["tracklet", "vector"]
        counted = sum(h.n_crops for h in hits)
        rows: Optional[List[dict]] = None
        if counted + 1 <= MAX_LIMIT:
            res = self._vsearch(self._crops, [query], counted + 1, expr, fields)[0]
            if len(res) == counted:
                rows = [_entity(h, "id") for h in res]
        if rows is None:
            rows = self._query(self._crops, expr, fields)
        members: Dict[str, List[dict]] = {}
        for r in rows:
            members.setdefault(r["tracklet"], []).append(r)
        for h in hits:
            rs = members.get(h.tracklet, [])
            if not rs:
                continue
            d = to_distance(np.asarray([r["vector"] for r in rs], np.float32) @ query)
            i = min(range(len(rs)), key=lambda i: (d[i], rs[i]["id"]))
            h.best = _hit(rs[i], None, float(d[i]))

    # -- delete ---------------------------------------------------------------------------

    def _iterate(self, coll: str, expr: str, fields: List[str]) -> Iterable[dict]:
        """Every row ``expr`` keeps, page by page in primary key order (a query with a limit
        answers the smallest keys, in order: pymilvus's query iterator relies on it too; that
        iterator itself, on a 2.3 server, read without this handle's guarantee)."""
        pk, text = {
            self._crops: ("id", False),
            self._tr: ("key", True),
            self._cams: ("camera", False),
            self._ids: ("key", True),
            self._log: ("absorbed", False),
        }.get(coll, ("key", False))
        last = None
        while True:
            cond = expr if last is None else f"{pk} > {json.dumps(last)}"
            if last is not None and expr:
                cond = f"({expr}) and {cond}"
            if not cond:  # every row (-2^63 is no key: ids are the caller's, >= 0 after all)
                cond = f'{pk} >= ""' if text else f"{pk} >= {-(2**63) + 1}"
            rows = self._query(coll, cond, list(dict.fromkeys([pk, *fields])), limit=_PAGE)
            yield from rows
            if len(rows) < _PAGE:
                return
            last = rows[-1][pk]

    def _delete(self, flt: base.DeleteFilter) -> int:
        """Filter expressions inside Milvus (see :meth:`GalleryStore.delete`)."""
        self._repair(None)
        self._seal()  # Lite: its reads below would each scan the unflushed rows
        conds = []
        if flt.before is not None:
            conds.append(f"timestamp < {float(flt.before)!r}")
        if flt.camera is not None:
            conds.append(f"camera == {int(flt.camera)}")
        if flt.track is not None:
            conds.append(f"tracklet == {json.dumps(flt.track)}")
        id_list = None if flt.ids is None else flt.ids.tolist()
        cond = " and ".join(conds)
        victims: List[int] = []
        per_key: Dict[str, int] = {}
        spans: Dict[int, Span] = {}
        parts = [None] if id_list is None else list(chunks(id_list, _IN_CHUNK))
        for part in parts:
            expr = (
                cond if part is None else " and ".join(filter(None, [cond, f"id in {_in(part)}"]))
            )
            for r in self._iterate(self._crops, expr, ["id", "tracklet", "camera", "timestamp"]):
                victims.append(int(r["id"]))
                per_key[r["tracklet"]] = per_key.get(r["tracklet"], 0) + 1
                c, t = int(r["camera"]), float(r["timestamp"])
                a, b, n = spans.get(c, (t, t, 0))
                spans[c] = (min(a, t), max(b, t), n + 1)
        if not victims:
            return 0
        keys = sorted(per_key)
        journal = self._journal("delete", sorted(spans), keys)
        for part in chunks(victims, _IN_CHUNK):
            self._c.delete(self._crops, filter=f"id in {_in(part)}")
        self._wrote()
        self._after_delete(per_key, spans)
        self._done(journal)
        return len(victims)

    def _after_delete(self, per_key: Dict[str, int], spans: Dict[int, Span]) -> None:
        """The tracklets and cameras after their crops (``spans``: each camera's deleted
        ones) were deleted, every read first: a tracklet that lost all its counted crops (and
        has none left) is deleted, the others rebuilt from their crops; a camera's count goes
        down, and its span is found anew where its first or last crop went."""
        self._seal()
        stored = self._tracklets(sorted(per_key), ["key", "n"])
        whole = [k for k, m in per_key.items() if k in stored and int(stored[k]["n"]) == m]
        if any(self._count(self._crops, f"tracklet in {_in(p)}") for p in chunks(whole, _IN_CHUNK)):
            whole = []  # counts were off: rebuild them all
        rows, gone = self._rebuilt(sorted(set(per_key) - set(whole)))
        known = self._spans(sorted(spans))
        moved = [
            c for c, (a, b, n) in spans.items()
            if c not in known or a <= known[c][0] or b >= known[c][1] or n >= known[c][2]
        ]  # fmt: skip
        counts = None  # a server counts (other writers); Lite's counts are its own
        if not self._server:
            counts = {c: known[c][2] - spans[c][2] if c in known else 0 for c in moved}
        new: Dict[int, Optional[Span]] = self._new_spans(moved, known, counts)
        for c in set(spans) - set(moved):
            a, b, n = known[c]
            new[c] = (a, b, n - spans[c][2])
        self._write_tracklets(rows, gone + whole)
        self._write_spans(new)

    # -- the rest -------------------------------------------------------------------------

    def _stats(self) -> base.StoreStats:
        """From the cameras' rows, no crop read: a server counts each camera's crops with
        ``count(*)`` (4 at a time; exact while other processes write), Milvus Lite (one
        process) keeps the counts in the rows."""
        spans = self._spans()
        cams = sorted(spans)
        counts = self._camera_counts(cams) if self._server else {c: spans[c][2] for c in cams}
        per = {c: n for c, n in counts.items() if n > 0}
        first = min((spans[c][0] for c in per), default=None)
        last = max((spans[c][1] for c in per), default=None)
        return self._stats_of(
            per,
            self._count(self._tr),
            first,
            last,
            index=self.index.record(),
            pending_writes=len(self._pending()),
        )

    def _tracklet(self, key: str) -> Optional[Tuple[np.ndarray, TrackletHit]]:
        r = self._tracklets([key], _TR_FIELDS + ["vector"]).get(key)
        if r is None:
            return None
        return normalize(np.asarray(r["vector"], np.float32)), _tracklet_hit(r, 0.0)

    def check_recall(
        self,
        queries: np.ndarray,
        k: int = 10,
        by: str = "crop",
        cameras: Optional[CameraFilter] = None,
        after: Optional[float] = None,
        before: Optional[float] = None,
    ) -> float:
        """The recall@k of this store's searches for ``queries`` under a filter, against the
        exact answer (the filtered rows' vectors fetched and ranked here: at most
        :data:`CHECK_ROWS` of them). Below the URI's ``recall=R`` it logs a warning saying so
        and what to raise."""
        q = base.check_search_args(queries, k, by, self.dim, f"store {self.uri}")
        got = self.search(q, k, by, cameras, after, before)
        coll, pk = (self._crops, "id") if by == "crop" else (self._tr, "key")
        with self._lock:
            expr = self._expr(by, cameras, after, before)
            n = self._count(coll, expr)
            if n > CHECK_ROWS:
                raise StoreError(
                    f"store {self.uri}: {n} rows under this filter; an exact check reads at most"
                    f" {CHECK_ROWS}: narrow it (cameras, after, before)"
                )
            rows = list(self._iterate(coll, expr, [pk, "vector"]))
        if not rows:
            return 1.0
        d = to_distance(q @ np.asarray([r["vector"] for r in rows], np.float32).T)
        ids = [r[pk] for r in rows]
        found, total = 0, 0
        for di, hits in zip(d, got):
            want = {ids[i] for i in sorted(range(len(ids)), key=lambda i: (di[i], ids[i]))[:k]}
            have = {h.id if by == "crop" else h.tracklet for h in hits}
            found, total = found + len(want & have), total + len(want)
        recall = found / max(total, 1)
        asked = self._t.recall
        if asked is not None and recall < asked:
            log.warning(
                "store %s: recall@%d %.3f on these %d queries is below the asked %.3f (index %s):"
                " raise ef / nprobe or exact in the URI",
                self.uri, k, recall, len(q), asked, self.index.record(),
            )  # fmt: skip
        return recall

    def wait_indexed(self, timeout: float = 7200.0) -> Dict[str, Any]:
        """Seal what was added and wait until Milvus searches it with its index (a server
        indexes sealed segments in the background, and searches the growing ones with a
        temporary index, ``queryNode.segcore.interimIndex``, until the sealed one is loaded);
        returns ``{"crops": rows indexed, "tracklets": rows indexed, "seconds": waited}``."""
        t0 = time.monotonic()
        out: Dict[str, Any] = {}
        with self._lock:
            for name, coll in (("crops", self._crops), ("tracklets", self._tr)):
                self._c.flush(coll)
                while True:
                    info = self._c.describe_index(coll, "vector")
                    flushed = sum(seg.num_rows for seg in self._c.list_persistent_segments(coll))
                    served = sum(  # the rows searched in sealed segments, with their index
                        seg.num_rows
                        for seg in self._c.list_loaded_segments(coll)
                        if getattr(seg.state, "name", seg.state) == "Sealed"
                    )
                    if int(info.get("pending_index_rows", 0)) == 0 and served >= flushed:
                        break
                    if time.monotonic() - t0 > timeout:
                        raise StoreError(f"store {self.uri}: {coll} not indexed in {timeout} s")
                    time.sleep(1.0)
                out[name] = int(info.get("indexed_rows", 0))
            self._wrote()
        out["seconds"] = time.monotonic() - t0
        return out

    # -- site identities ------------------------------------------------------------------

    def _identity_collections(self, create: bool) -> bool:
        """``{prefix}_identities`` (pk ``key``: a tracklet id, ``identity``) and
        ``{prefix}_identity_log`` (pk ``absorbed``, ``into_id``, ``at``; the row ``absorbed ==
        0`` holds the next new id in ``into_id``), each with a 2-d placeholder vector (Milvus
        wants one): whether they exist, made first when ``create``."""
        names = (self._ids, self._log)
        if all(self._c.has_collection(n) for n in names):
            if names[0] not in self._loaded:
                self._load(list(names))
                self._loaded.update(names)
            return True
        if not create:
            return False
        dt = self._pm.DataType
        for name, fields in (
            (self._ids, [("key", dt.VARCHAR, {"is_primary": True, "max_length": 64}),
                         ("identity", dt.INT64, {})]),
            (self._log, [("absorbed", dt.INT64, {"is_primary": True}), ("into_id", dt.INT64, {}),
                         ("at", dt.DOUBLE, {})]),
        ):  # fmt: skip
            if not self._c.has_collection(name):
                self._make(name, fields, 2, self._index_params(name, None, "L2"))
        self._load(list(names))
        self._loaded.update(names)
        return True

    @property
    def _ids(self) -> str:
        return self._meta[: -len("meta")] + "identities"

    @property
    def _log(self) -> str:
        return self._meta[: -len("meta")] + "identity_log"

    def _identity_of(self, keys: List[str]) -> Dict[str, int]:
        out: Dict[str, int] = {}
        if not keys or not self._identity_collections(False):
            return out
        for part in chunks(keys, _IN_CHUNK):
            rows = self._query(self._ids, f"key in {_in(part)}", ["key", "identity"])
            out.update((r["key"], int(r["identity"])) for r in rows)
        return out

    def _tracklet_table(
        self,
        flt: base.SearchFilter,
        identities: Optional[List[int]],
        keys: Optional[List[str]],
        features: bool,
    ) -> base.TrackletTable:
        """The filter inside Milvus; with ``identities``, their tracklet ids first."""
        expr = self._expr("tracklet", flt.cameras, flt.after, flt.before)
        if identities is not None:
            found_keys: set = set()
            if self._identity_collections(False):
                for part in chunks(identities, _IN_CHUNK):
                    rows = self._iterate(self._ids, f"identity in {_in(part)}", ["key"])
                    found_keys.update(r["key"] for r in rows)
            keys = sorted(found_keys if keys is None else found_keys & set(keys))
        fields = _TR_FIELDS + (["vector"] if features else [])
        if keys is None:
            found = list(self._iterate(self._tr, expr, fields))
        else:
            found = []
            for part in chunks(keys, _IN_CHUNK):
                cond = " and ".join(filter(None, [expr, f"key in {_in(part)}"]))
                found += list(self._iterate(self._tr, cond, fields))
        ident = self._identity_of([r["key"] for r in found])
        rows = [
            (
                r["key"],
                r["camera"],
                r["track_id"],
                r["start"],
                r["end"],
                r["n"],
                ident.get(r["key"], -1),
            )
            for r in found
        ]
        feats = None
        if features:
            vecs = np.asarray([r["vector"] for r in found], np.float32).reshape(-1, self.dim)
            feats = normalize(vecs)
        return base.TrackletTable.of_rows(rows, feats)

    def _set_identities(
        self, assign: Dict[str, int], merges: List[Tuple[int, int, float]], next_id: int
    ) -> int:
        """Upserts (Milvus has no transactions: the identities, then the log)."""
        self._identity_collections(True)
        held = set(self._tracklets(list(assign), ["key"]))
        ups = [
            {"key": k, "identity": v, "vector": [0.0, 0.0]} for k, v in assign.items() if k in held
        ]
        for part in chunks(ups, _INSERT_ROWS):
            self._c.upsert(self._ids, part)
        top = max(next_id, self._identity_log().next_id)
        log = [{"absorbed": a, "into_id": b, "at": t, "vector": [0.0, 0.0]} for a, b, t in merges]
        log.append({"absorbed": 0, "into_id": top, "at": 0.0, "vector": [0.0, 0.0]})
        self._c.upsert(self._log, log)
        self._wrote()
        return len(ups)

    def _identity_log(self) -> base.IdentityLog:
        if not self._identity_collections(False):
            return base.IdentityLog()
        rows = list(self._iterate(self._log, "", ["absorbed", "into_id", "at"]))
        top = [int(r["into_id"]) for r in rows if int(r["absorbed"]) == 0]
        merges = sorted(
            (float(r["at"]), int(r["absorbed"]), int(r["into_id"]))
            for r in rows
            if int(r["absorbed"]) != 0
        )
        return base.IdentityLog(top[0] if top else 1, [(a, b, t) for t, a, b in merges])

    def _forget_identity(self, identity: int) -> None:
        if not self._identity_collections(False):
            return
        self._c.delete(self._ids, filter=f"identity == {int(identity)}")
        self._c.delete(
            self._log,
            filter=f"absorbed != 0 and (absorbed == {int(identity)} or into_id == {int(identity)})",
        )
        self._wrote()

    def close(self) -> None:
        """Close the connection (Milvus keeps the data)."""
        with self._lock:
            if self._c is not None:
                self._seal()
                self._c.close()
                self._c = None


def _by_d(item: Tuple[Any, float]) -> Tuple[float, str]:
    return (item[1], item[0]) if isinstance(item[0], int) else (item[1], str(item[0]))


def _hit(e: dict, score: Optional[float], distance: Optional[float] = None) -> Hit:
    d = float(to_distance(score)) if distance is None else distance
    return Hit(
        id=int(e["id"]),
        distance=d,
        camera=int(e["camera"]),
        timestamp=float(e["timestamp"]),
        track_id=int(e["track_id"]),
        frame=int(e["frame"]),
        box=(float(e["x1"]), float(e["y1"]), float(e["x2"]), float(e["y2"])),
        path=str(e["path"]),
        pid=int(e["pid"]),
    )


def _tracklet_hit(e: dict, distance: float) -> TrackletHit:
    return TrackletHit(
        tracklet=str(e["key"]),
        camera=int(e["camera"]),
        track_id=int(e["track_id"]),
        start=float(e["start"]),
        end=float(e["end"]),
        n_crops=int(e["n"]),
        distance=float(distance),
    )


def _entity(h: Any, pk: str) -> dict:
    """A search hit's fields, its primary key included."""
    e = dict(h["entity"])
    if pk not in e:
        e[pk] = h.get("id") if hasattr(h, "get") else h["id"]
    return e
