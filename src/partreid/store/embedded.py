"""The embedded gallery store: one folder, no server.

Layout of the folder::

    store.json     format, info (with dim) -- written once, at creation, atomically (tmp + rename)
    meta.sqlite    crops, tracklets and the committed vector row count (SQLite, WAL mode)
    vectors.f32    the crops' L2-normalised features, float32, row after row (append-only)

Every file is created readable by its owner only (0600; SQLite's ``-wal``/``-shm`` files take
the mode of ``meta.sqlite``) and a folder the store makes is 0700: the features and paths are
biometric data. Opening a store whose folder or files others can read logs a warning naming
them (:func:`partreid.utils.private.warn_loose_modes`); their modes are left as they are.

Crash safety (``kill -9`` at any moment loses at most the unfinished batch): ``add`` first
writes the new rows at the end of ``vectors.f32`` and fsyncs them, then commits ONE SQLite
transaction (``synchronous=FULL``) that inserts the crops referencing those rows, updates their
tracklets and sets ``meta.rows`` (the committed row count). On open, ``vectors.f32`` is
truncated to ``meta.rows`` rows: rows written by an uncommitted batch are dropped. A delete is
one transaction as well: the crops' metadata rows are removed (their vector rows become
unreferenced garbage, never read again; the file is not compacted) and their tracklets updated.
A deleted id may be added again later (as a new crop).

Tracklets (see :mod:`partreid.store.base`): per track, SQLite keeps the running float64 sum of
the normalised crop features, the count and the span; add adds to the sum, delete subtracts
exactly, the span is recomputed from the remaining crops. A one-crop tracklet (track_id -1)
keeps no sum: its feature is its crop's row.

Search: the filter runs in SQLite first, on covering indexes (crops: (camera, ts, row) and
(ts, row); tracklets: (camera, t0, t1) and (t0, t1)). The tracklet overlap filter ``t1 >= after
and t0 < before`` is bounded on ``t0`` from both sides with ``t0 >= after - meta.max_span``
(``max_span`` is an upper bound of every tracklet's ``t1 - t0``: add raises it, delete keeps it),
so a one-day filter reads one day of index, not every later tracklet. A filtered subset of at
most ``SMALL`` rows is ranked exactly with numpy on its gathered rows; larger or unfiltered
searches use an in-memory faiss ``IndexFlatIP`` (exact) with an ``IDSelectorBatch`` for the
filter -- or exact numpy in blocks over the vector file when faiss is not installed. The
in-memory indexes (faiss for the crops, a float32 matrix for the tracklet features) are built
from the files on the first search that needs them (the faiss storage is sized once and read
straight from the vector file) and then updated incrementally by add and delete (never
rebuilt).

Several processes (an ingest per camera, a server searching): every add and delete holds
``writer.lock`` (an exclusive POSIX file lock) and starts from the committed row count, so
writers take turns and never overwrite each other's rows; opening a store cuts an uncommitted
tail of ``vectors.f32`` only when no writer holds that lock (else the rows are its batch in
flight). A handle notices other processes' commits by SQLite's ``data_version`` at its next
search or stats, and then rebuilds its in-memory indexes when a search needs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

try:  # POSIX: one writer at a time across processes
    import fcntl
except ImportError:  # pragma: no cover (Windows: one writing process is the user's job)
    fcntl = None  # type: ignore[assignment]

from partreid.store import base
from partreid.store.base import (
    CameraFilter,
    Hit,
    StoreError,
    TrackletHit,
    camera_ranges,
    chunks,
    normalize,
    sum_by_group,
    to_distance,
)
from partreid.utils.extras import load_faiss
from partreid.utils.private import (
    create_private_file,
    make_private_dir,
    open_private,
    warn_loose_modes,
)

FORMAT = "partreid-store/1"
SMALL = 20000  # filtered subsets up to this many rows: exact numpy on the gathered rows
MARGIN = 16  # extra candidates fetched from the index so that ties at rank k sort by id
_CHUNK = 900  # ids per SQL "IN (...)"
_CROP_COLS = "id, row, camera, ts, track_id, frame, x1, y1, x2, y2, path, pid"

# max_span bounds every tracklet's t1 - t0 from above (add raises it, delete leaves it), so that
# the tracklet time filter is a range on t0 on both sides (see _where)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value);
INSERT OR IGNORE INTO meta VALUES('rows', 0);
INSERT OR IGNORE INTO meta VALUES('max_span', 0);
CREATE TABLE IF NOT EXISTS crops(
    id INTEGER PRIMARY KEY, row INTEGER NOT NULL, camera INTEGER NOT NULL, ts REAL NOT NULL,
    track_id INTEGER NOT NULL, frame INTEGER NOT NULL,
    x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
    path TEXT NOT NULL, pid INTEGER NOT NULL, tracklet INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tracklets(
    tid INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, camera INTEGER NOT NULL,
    track_id INTEGER NOT NULL, n INTEGER NOT NULL, t0 REAL NOT NULL, t1 REAL NOT NULL,
    sum BLOB, row INTEGER);
-- covering: a filter reads only the index (crops: the vector row; tracklets: t1, the rowid)
CREATE INDEX IF NOT EXISTS crops_cam_ts_row ON crops(camera, ts, row);
CREATE INDEX IF NOT EXISTS crops_ts_row ON crops(ts, row);
CREATE INDEX IF NOT EXISTS crops_cam_track ON crops(camera, track_id);
CREATE UNIQUE INDEX IF NOT EXISTS crops_row ON crops(row);
CREATE INDEX IF NOT EXISTS crops_tracklet ON crops(tracklet);
CREATE INDEX IF NOT EXISTS tracklets_cam_t0 ON tracklets(camera, t0, t1);
CREATE INDEX IF NOT EXISTS tracklets_t0 ON tracklets(t0, t1);
"""
# the files of a store folder that must stay the owner's (audit.log: partreid serve's)
PRIVATE_FILES = (
    "store.json",
    "meta.sqlite",
    "meta.sqlite-wal",
    "meta.sqlite-shm",
    "vectors.f32",
    "writer.lock",
    "audit.log",
)
# site identities (partreid.store.link): one row per linked tracklet, the merges, and
# meta.next_identity; made on open in a store of an earlier layout
_IDENTITY_SCHEMA = """
CREATE TABLE IF NOT EXISTS identities(key TEXT PRIMARY KEY, identity INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS identities_identity ON identities(identity);
CREATE TABLE IF NOT EXISTS identity_merges(
    absorbed INTEGER PRIMARY KEY, into_id INTEGER NOT NULL, at REAL NOT NULL);
"""


def open_embedded(uri: str, create: bool, info: Optional[Dict[str, Any]]) -> EmbeddedStore:
    """Open the embedded store in the folder ``uri`` (``file://`` prefix allowed)."""
    path = uri[len("file://") :] if uri.lower().startswith("file://") else uri
    return EmbeddedStore(path, create=create, info=info)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class EmbeddedStore(base.GalleryStore):
    """The gallery in one folder (see the module docstring)."""

    backend = "embedded"

    def __init__(self, path: str, create: bool = False, info: Optional[Dict[str, Any]] = None):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.uri = path
        meta_file = os.path.join(self.path, "store.json")
        if not os.path.isfile(meta_file):
            if not create:
                what = "no gallery store in" if os.path.isdir(self.path) else "no folder"
                raise StoreError(
                    f"store {path}: {what} {self.path} (expected a store folder with store.json;"
                    f" {base.MAKE_ONE})"
                )
            if info is None:
                raise StoreError(f"store {path}: creating a store needs info with 'dim'")
            self._create(meta_file, info)
        warn_loose_modes(
            [self.path] + [os.path.join(self.path, f) for f in PRIVATE_FILES],
            f"the gallery store {path}",
        )
        with open(meta_file) as f:
            head = json.load(f)
        if head.get("format") != FORMAT:
            raise StoreError(f"store {path}: {meta_file} is not a {FORMAT} store")
        self.info = head["info"]
        if info is not None and int(info["dim"]) != self.dim:
            raise StoreError(
                f"store {path} holds {self.dim}-d features; asked for dim {int(info['dim'])}"
            )
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            os.path.join(self.path, "meta.sqlite"), isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        if not self._db.execute("SELECT 1 FROM sqlite_master WHERE name='identities'").fetchone():
            self._db.executescript(_IDENTITY_SCHEMA)  # a store made before site identities
        self._rows = int(self._db.execute("SELECT value FROM meta WHERE key='rows'").fetchone()[0])
        self._max_span = float(
            self._db.execute("SELECT value FROM meta WHERE key='max_span'").fetchone()[0]
        )
        vec_file = os.path.join(self.path, "vectors.f32")
        self._vf = open(vec_file, "r+b")  # noqa: SIM115 (held open for the store's life)
        size, want = os.path.getsize(vec_file), self._rows * self.dim * 4
        if size < want:
            raise StoreError(
                f"store {path}: vectors.f32 has {size // (4 * self.dim)} rows, the metadata"
                f" references {self._rows}: the vector file was truncated or replaced"
            )
        self._lockf = open_private(os.path.join(self.path, "writer.lock"))
        if size > want and self._try_writer_lock():  # rows of a batch that never committed
            try:  # (while another process holds the lock, those rows are its batch in flight)
                self._vf.truncate(want)
                self._vf.flush()
                os.fsync(self._vf.fileno())
            finally:
                self._unlock_writer()
        self._version = self._db.execute("PRAGMA data_version").fetchone()[0]
        self._mm: Optional[np.ndarray] = None
        self._index: Any = None  # faiss index of the crops (ids = vector rows), lazily
        self._valid: Optional[np.ndarray] = None  # without faiss: live rows mask, lazily
        self._tv: Optional[np.ndarray] = None  # tracklet features by tid, lazily
        self._tvalid: Optional[np.ndarray] = None

    # -- creation, files ------------------------------------------------------------------

    def _create(self, meta_file: str, info: Dict[str, Any]) -> None:
        """The store's files, readable by their owner only (0600 in a 0700 folder we make)."""
        make_private_dir(self.path)
        info = dict(info)
        info["dim"] = int(info["dim"])
        try:
            text = json.dumps({"format": FORMAT, "info": info}, indent=1, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise StoreError(f"store {self.uri}: info is not JSON-able: {e}") from None
        for name in ("meta.sqlite", "meta.sqlite-wal", "meta.sqlite-shm"):  # a half-made store
            p = os.path.join(self.path, name)
            if os.path.exists(p):
                os.remove(p)
        create_private_file(os.path.join(self.path, "vectors.f32"))
        create_private_file(os.path.join(self.path, "meta.sqlite"))  # SQLite's -wal/-shm copy it
        db = sqlite3.connect(os.path.join(self.path, "meta.sqlite"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA + _IDENTITY_SCHEMA)
        db.close()
        tmp = meta_file + ".tmp"
        create_private_file(tmp)
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, meta_file)  # store.json last: its presence means "created"
        _fsync_dir(self.path)

    # -- other processes ---------------------------------------------------------------

    def _try_writer_lock(self) -> bool:
        if fcntl is None:
            return True
        try:
            fcntl.flock(self._lockf.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def _unlock_writer(self) -> None:
        if fcntl is not None:
            fcntl.flock(self._lockf.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the store's writer lock (``writer.lock``, across processes) for one add or
        delete, and start from the committed state, whoever committed it."""
        if fcntl is not None:
            fcntl.flock(self._lockf.fileno(), fcntl.LOCK_EX)
        try:
            self._sync()
            yield
            self._version = self._db.execute("PRAGMA data_version").fetchone()[0]
        finally:
            self._unlock_writer()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One SQLite write transaction (``BEGIN IMMEDIATE`` .. ``COMMIT``), rolled back if the
        body (or the commit) fails; every write of the metadata runs in one."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _sync(self) -> None:
        """Notice commits of other processes (SQLite's ``data_version``): re-read the row count
        and span bound, and drop the in-memory indexes so the next search rebuilds them."""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return
        self._version = version
        meta = dict(
            self._db.execute("SELECT key, value FROM meta WHERE key IN ('rows', 'max_span')")
        )
        self._rows, self._max_span = int(meta["rows"]), float(meta["max_span"])
        self._mm = None
        self._index = self._valid = self._tv = self._tvalid = None

    def _vectors(self) -> np.ndarray:
        """The committed rows of the vector file, memory-mapped (read-only)."""
        if self._mm is None or self._mm.shape[0] != self._rows:
            if self._rows == 0:
                self._mm = np.zeros((0, self.dim), np.float32)
            else:
                self._mm = np.memmap(
                    os.path.join(self.path, "vectors.f32"),
                    dtype=np.float32,
                    mode="r",
                    shape=(self._rows, self.dim),
                )
        return self._mm

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.shape[0] == 0:
            return np.zeros((0, self.dim), np.float32)
        order = np.argsort(rows, kind="stable")
        out = np.empty((rows.shape[0], self.dim), np.float32)
        out[order] = self._vectors()[rows[order]]
        return out

    # -- add ------------------------------------------------------------------------------

    def _present(self, ids: np.ndarray) -> np.ndarray:
        found: set = set()
        for part in chunks(ids.tolist(), _CHUNK):
            q = f"SELECT id FROM crops WHERE id IN ({','.join('?' * len(part))})"
            found.update(r[0] for r in self._db.execute(q, part))
        return np.array([i in found for i in ids.tolist()], dtype=bool)

    def _insert(self, new: base.NewCrops) -> None:
        """The vectors first (fsynced), then one transaction (see the module docstring)."""
        n, feats, r0 = len(new), new.features, self._rows
        rows = np.arange(r0, r0 + n, dtype=np.int64)
        # 1. the vectors, durable before any metadata references them
        self._vf.seek(r0 * self.dim * 4)
        self._vf.truncate()
        self._vf.write(np.ascontiguousarray(feats).tobytes())
        self._vf.flush()
        os.fsync(self._vf.fileno())
        # 2. one transaction: tracklets, crops, committed row count (and the span bound)
        with self._transaction() as db:
            tids, changed, span = self._add_tracklets(new, rows)
            self._insert_crops(new.batch, rows, tids)
            db.execute("UPDATE meta SET value=? WHERE key='rows'", (r0 + n,))
            if span > self._max_span:
                db.execute("UPDATE meta SET value=? WHERE key='max_span'", (span,))
        self._rows = r0 + n
        self._max_span = max(self._max_span, span)
        # 3. the in-memory indexes, if built
        if self._index is not None:
            self._index.add_with_ids(feats, rows)
        if self._valid is not None:
            self._valid = np.concatenate([self._valid, np.ones(n, bool)])
        self._set_tracklets(changed)

    def _add_tracklets(
        self, new: base.NewCrops, rows: np.ndarray
    ) -> Tuple[np.ndarray, Dict[int, Optional[np.ndarray]], float]:
        """Insert or update the batch's tracklets (in the open transaction).

        Returns each crop's tid, the changed tracklets' new features and their largest span.
        """
        db = self._db
        batch = new.batch
        tid_of = np.empty(len(new.keys), np.int64)  # by position in new.keys
        changed: Dict[int, Optional[np.ndarray]] = {}
        span = 0.0
        for j, key in enumerate(new.keys):
            if key.startswith("crop:"):  # one-crop tracklets: below, in the batch's order
                continue
            row = db.execute(
                "SELECT tid, n, t0, t1, sum FROM tracklets WHERE key=?", (key,)
            ).fetchone()
            a, b, s = float(new.start[j]), float(new.end[j]), new.sum(j)
            if row is None:
                cam, tr = (int(v) for v in key.split(":"))
                cur = db.execute(
                    "INSERT INTO tracklets(key, camera, track_id, n, t0, t1, sum)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (key, cam, tr, int(new.counts[j]), a, b, s.tobytes()),
                )
                tid = int(cur.lastrowid)
            else:
                tid = int(row[0])
                s = np.frombuffer(row[4], np.float64) + s
                a, b = min(float(row[2]), a), max(float(row[3]), b)
                db.execute(
                    "UPDATE tracklets SET n=?, t0=?, t1=?, sum=? WHERE tid=?",
                    (int(row[1] + new.counts[j]), a, b, s.tobytes(), tid),
                )
            span = max(span, b - a)
            tid_of[j] = tid
            changed[tid] = normalize(s)
        for i in np.nonzero(batch.track_id < 0)[0].tolist():
            ts_i = float(batch.timestamp[i])
            cur = db.execute(
                "INSERT INTO tracklets(key, camera, track_id, n, t0, t1, row)"
                " VALUES (?,?,-1,1,?,?,?)",
                (f"crop:{int(batch.ids[i])}", int(batch.camera[i]), ts_i, ts_i, int(rows[i])),
            )
            tid_of[new.of_crop[i]] = tid = int(cur.lastrowid)
            changed[tid] = new.features[i]
        return tid_of[new.of_crop], changed, span

    def _insert_crops(self, new: base.CropBatch, rows: np.ndarray, tids: np.ndarray) -> None:
        """Insert the batch's crop rows (in the open transaction)."""
        box = new.box
        assert box is not None and new.path is not None
        self._db.executemany(
            f"INSERT INTO crops({_CROP_COLS}, tracklet) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            zip(
                new.ids.tolist(),
                rows.tolist(),
                new.camera.tolist(),
                new.timestamp.tolist(),
                new.track_id.tolist(),
                new.frame.tolist(),
                box[:, 0].tolist(),
                box[:, 1].tolist(),
                box[:, 2].tolist(),
                box[:, 3].tolist(),
                new.path,
                new.pid.tolist(),
                tids.tolist(),
            ),
        )

    # -- in-memory indexes ----------------------------------------------------------------

    def _crop_index(self) -> Any:
        faiss = load_faiss()
        if faiss is None:
            if self._valid is None:
                v = np.zeros(self._rows, bool)
                live = np.fromiter(
                    (r[0] for r in self._db.execute("SELECT row FROM crops")), np.int64
                )
                v[live] = True
                self._valid = v
            return None
        if self._index is None:
            self._index = self._build_crop_index(faiss)
        return self._index

    def _build_crop_index(self, faiss: Any) -> Any:
        """A faiss ``IndexIDMap(IndexFlatIP)`` of the live rows, filled in place from the file.

        The flat index's storage is sized once and the rows are read straight into it (runs of
        consecutive rows with one ``readinto``): no intermediate copies, no growing vector.
        """
        live = np.fromiter(
            (r[0] for r in self._db.execute("SELECT row FROM crops ORDER BY row")), np.int64
        )
        index = faiss.IndexIDMap(faiss.IndexFlatIP(self.dim))
        n, d = int(live.shape[0]), self.dim
        if n == 0:
            return index
        flat = faiss.downcast_index(index.index)
        flat.codes.resize(n * d * 4)
        buf = faiss.rev_swig_ptr(flat.codes.data(), n * d * 4).view(np.float32).reshape(n, d)
        self._read_rows(live, buf)
        flat.ntotal = n
        index.id_map.resize(n)
        faiss.rev_swig_ptr(index.id_map.data(), n)[:] = live
        index.ntotal = n
        return index

    def _read_rows(self, rows: np.ndarray, out: np.ndarray, step: int = 65536) -> None:
        """Copy the vector rows ``rows`` (ascending, unique) into ``out`` (len(rows), D)."""
        mm = self._vectors()
        for i in range(0, rows.shape[0], step):
            part = rows[i : i + step]
            dst = out[i : i + part.shape[0]]
            if int(part[-1]) - int(part[0]) == part.shape[0] - 1:  # consecutive rows
                self._vf.seek(int(part[0]) * self.dim * 4)
                got = self._vf.readinto(memoryview(dst).cast("B"))
                if got != dst.nbytes:
                    raise StoreError(f"store {self.uri}: vectors.f32 is shorter than committed")
            else:
                dst[:] = mm[part]

    def _set_tracklets(self, changed: Dict[int, Optional[np.ndarray]]) -> None:
        """Changed tracklet features (None: gone) into the tracklet matrix, if built."""
        if self._tv is not None:
            for tid, feat in changed.items():
                self._set_tracklet(tid, feat)

    def _set_tracklet(self, tid: int, feat: Optional[np.ndarray]) -> None:
        assert self._tv is not None and self._tvalid is not None
        if tid >= self._tv.shape[0]:
            cap = max(tid + 1, 2 * self._tv.shape[0], 1024)
            tv = np.zeros((cap, self.dim), np.float32)
            tv[: self._tv.shape[0]] = self._tv
            valid = np.zeros(cap, bool)
            valid[: self._tvalid.shape[0]] = self._tvalid
            self._tv, self._tvalid = tv, valid
        if feat is None:
            self._tvalid[tid] = False
            self._tv[tid] = 0
        else:
            self._tv[tid] = feat
            self._tvalid[tid] = True

    def _tracklet_matrix(self) -> Tuple[np.ndarray, np.ndarray]:
        if self._tv is None:
            db = self._db
            top = db.execute("SELECT max(tid) FROM tracklets").fetchone()[0]
            cap = max(int(top or 0) + 1, 1024)
            tv = np.zeros((cap, self.dim), np.float32)
            valid = np.zeros(cap, bool)
            blk, bt, m = np.empty((4096, self.dim), np.float64), np.empty(4096, np.int64), 0
            for tid, s in db.execute("SELECT tid, sum FROM tracklets WHERE sum IS NOT NULL"):
                bt[m], blk[m] = tid, np.frombuffer(s, np.float64)  # one reused block
                m += 1
                if m == bt.shape[0]:
                    tv[bt], valid[bt], m = normalize(blk), True, 0
            tv[bt[:m]], valid[bt[:m]] = normalize(blk[:m]), True
            single = db.execute("SELECT tid, row FROM tracklets WHERE sum IS NULL").fetchall()
            if single:
                tr = np.array(single, np.int64)
                tv[tr[:, 0]] = self._gather(tr[:, 1])
                valid[tr[:, 0]] = True
            self._tv, self._tvalid = tv, valid
        assert self._tvalid is not None
        return self._tv, self._tvalid

    # -- search ---------------------------------------------------------------------------

    def _where(
        self, by: str, cameras: Optional[CameraFilter], after: Any, before: Any
    ) -> Tuple[str, list]:
        """The SQL filter and its parameters; tracklets: also ``t0 >= after - max_span``.

        That lower bound on ``t0`` (implied by ``t1 >= after`` and the span bound, with a second
        of slack for rounding) makes the filter a bounded range of the (camera, t0, t1) index:
        without it every tracklet ending after ``after`` -- up to the newest -- was scanned.
        """
        conds, params = [], []
        if cameras is not None:  # ids as one IN list, ranges as BETWEENs: never expanded
            spans = camera_ranges(cameras, f"store {self.uri}")
            ids = [a for a, b in spans if a == b]
            terms = [f"camera IN ({','.join('?' * len(ids))})"] if ids else []
            terms += ["camera BETWEEN ? AND ?" for a, b in spans if a != b]
            conds.append(f"({' OR '.join(terms)})" if terms else "0")
            params += ids + [v for a, b in spans if a != b for v in (a, b)]
        if by == "crop":
            if after is not None:
                conds.append("ts >= ?")
                params.append(float(after))
            if before is not None:
                conds.append("ts < ?")
                params.append(float(before))
            return " AND ".join(conds), params
        if after is not None:
            a = float(after)
            conds.append("t0 >= ? AND t1 >= ?")
            params += [a - self._max_span - 1.0 - 1e-9 * abs(a), a]
        if before is not None:
            conds.append("t0 < ?")
            params.append(float(before))
        return " AND ".join(conds), params

    def _search(self, q: np.ndarray, k: int, by: str, flt: base.SearchFilter) -> List[List[Any]]:
        """Filters applied in SQLite first (see :meth:`GalleryStore.search`)."""
        self._sync()  # another process (an ingest) may have added or deleted since
        where, params = self._where(by, flt.cameras, flt.after, flt.before)
        if by == "crop":
            return self._search_crops(q, k, where, params)
        return self._search_tracklets(q, k, where, params)

    def _search_crops(self, q: np.ndarray, k: int, where: str, params: list) -> List[List[Hit]]:
        cand: List[Tuple[np.ndarray, np.ndarray]] = []  # per query: rows, scores
        subset = None
        if where:
            subset = np.fromiter(
                (r[0] for r in self._db.execute(f"SELECT row FROM crops WHERE {where}", params)),
                np.int64,
            )
        if subset is not None and len(subset) <= SMALL:
            subset.sort()
            scores = q @ self._gather(subset).T if len(subset) else np.zeros((len(q), 0))
            for s in scores:
                top = _top_with_ties(s, k)
                cand.append((subset[top], s[top]))
        else:
            index = self._crop_index()
            kk = k + MARGIN
            if index is not None:
                faiss = load_faiss()
                assert faiss is not None  # the index is a faiss index
                params_f = None
                if subset is not None:
                    selector = faiss.IDSelectorBatch(subset)  # alive during the search
                    params_f = faiss.SearchParameters(sel=selector)
                kk = min(kk, max(index.ntotal, 1))
                sc, rw = index.search(q, kk, params=params_f)
                for s, r in zip(sc, rw):
                    ok = r >= 0
                    cand.append((r[ok], s[ok]))
            else:
                mask = self._valid
                assert mask is not None
                if subset is not None:
                    m = np.zeros_like(mask)
                    m[subset] = True
                    mask = m
                cand = _blocked_topk(self._vectors(), mask, q, kk)
        allrows = np.unique(np.concatenate([c[0] for c in cand])) if cand else np.zeros(0, np.int64)
        meta = self._crops_by("row", allrows.tolist())
        out = []
        for rows, s in cand:
            hits = [_hit(meta[int(r)], float(d)) for r, d in zip(rows, to_distance(s))]
            hits.sort(key=lambda h: (h.distance, h.id))
            out.append(hits[:k])
        return out

    def _crops_by(self, col: str, values: List[int]) -> Dict[int, tuple]:
        out: Dict[int, tuple] = {}
        pos = 1 if col == "row" else 0
        for part in chunks(values, _CHUNK):
            sql = f"SELECT {_CROP_COLS} FROM crops WHERE {col} IN ({','.join('?' * len(part))})"
            for r in self._db.execute(sql, part):
                out[int(r[pos])] = r
        return out

    def _search_tracklets(
        self, q: np.ndarray, k: int, where: str, params: list
    ) -> List[List[TrackletHit]]:
        tv, valid = self._tracklet_matrix()
        cand: List[Tuple[np.ndarray, np.ndarray]] = []
        if where:
            sql = f"SELECT tid FROM tracklets WHERE {where}"
            subset = np.fromiter((r[0] for r in self._db.execute(sql, params)), np.int64)
            subset.sort()
            if len(subset) <= SMALL:
                scores = q @ tv[subset].T if len(subset) else np.zeros((len(q), 0))
                for s in scores:
                    top = _top_with_ties(s, k)
                    cand.append((subset[top], s[top]))
            else:
                mask = np.zeros_like(valid)
                mask[subset] = True
                cand = _blocked_topk(tv, mask, q, k + MARGIN)
        else:
            cand = _blocked_topk(tv, valid, q, k + MARGIN)
        tids = np.unique(np.concatenate([c[0] for c in cand])) if cand else np.zeros(0, np.int64)
        meta: Dict[int, tuple] = {}
        for part in chunks(tids.tolist(), _CHUNK):
            sql = (
                "SELECT tid, key, camera, track_id, t0, t1, n FROM tracklets"
                f" WHERE tid IN ({','.join('?' * len(part))})"
            )
            for r in self._db.execute(sql, part):
                meta[int(r[0])] = r
        out = []
        for qi, (t, s) in enumerate(cand):
            hits = [
                _tracklet_hit(meta[int(tid)][1:], float(d)) for tid, d in zip(t, to_distance(s))
            ]
            hits.sort(key=lambda h: (h.distance, h.tracklet))
            hits = hits[:k]
            self._best_crops(q[qi], hits, [int(t[i]) for i in range(len(t))], meta)
            out.append(hits)
        return out

    def _best_crops(
        self, query: np.ndarray, hits: List[TrackletHit], tids: List[int], meta: Dict[int, tuple]
    ) -> None:
        """Set each hit's ``best``: its crop nearest the query (one SQL query for all hits)."""
        by_key = {meta[t][1]: t for t in tids}
        want = [by_key[h.tracklet] for h in hits]
        if not want:
            return
        sql = f"SELECT {_CROP_COLS}, tracklet FROM crops WHERE tracklet IN ({','.join('?' * len(want))})"
        rs = self._db.execute(sql, want).fetchall()
        d = to_distance(self._gather(np.array([r[1] for r in rs], np.int64)) @ query)
        best: Dict[int, Tuple[float, int, int]] = {}
        for i, r in enumerate(rs):
            key = (float(d[i]), int(r[0]), i)
            if r[12] not in best or key < best[r[12]]:
                best[r[12]] = key
        for h, t in zip(hits, want):
            h.best = _hit(rs[best[t][2]], best[t][0])

    # -- delete ---------------------------------------------------------------------------

    def _delete(self, flt: base.DeleteFilter) -> int:
        """One transaction (see :meth:`GalleryStore.delete`)."""
        sel = self._select_crops(flt)
        if not sel:
            return 0
        cid = np.array([r[0] for r in sel], np.int64)
        rows = np.array([r[1] for r in sel], np.int64)
        uniq, inv = np.unique(np.array([r[2] for r in sel], np.int64), return_inverse=True)
        sums = sum_by_group(self._gather(rows), inv, len(uniq))
        cnt = np.bincount(inv, minlength=len(uniq))
        with self._transaction() as db:
            for part in chunks(cid.tolist(), _CHUNK):
                db.execute(f"DELETE FROM crops WHERE id IN ({','.join('?' * len(part))})", part)
            changed = self._subtract_tracklets(uniq.tolist(), sums, cnt)
        if self._index is not None:
            self._index.remove_ids(rows)
        if self._valid is not None:
            self._valid[rows] = False
        self._set_tracklets(changed)
        return int(len(cid))

    def _select_crops(self, flt: base.DeleteFilter) -> List[tuple]:
        """(id, row, tracklet) of the crops matching every given condition."""
        conds: Dict[str, list] = {}  # SQL condition -> its parameters
        if flt.before is not None:
            conds["ts < ?"] = [float(flt.before)]
        if flt.camera is not None:
            conds["camera = ?"] = [int(flt.camera)]
        if flt.track is not None:
            a, _, b = flt.track.partition(":")
            if a == "crop":
                conds["id = ?"] = [int(b)]
            else:
                conds["camera = ? AND track_id = ?"] = [int(a), int(b)]
        db = self._db
        if flt.ids is not None:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS del_ids(id INTEGER PRIMARY KEY)")
            db.execute("DELETE FROM del_ids")
            id_rows = ((int(i),) for i in flt.ids)
            db.executemany("INSERT OR IGNORE INTO del_ids VALUES (?)", id_rows)
            conds["id IN (SELECT id FROM del_ids)"] = []
        params = [v for values in conds.values() for v in values]
        sql = f"SELECT id, row, tracklet FROM crops WHERE {' AND '.join(conds)}"
        return db.execute(sql, params).fetchall()

    def _subtract_tracklets(
        self, tids: List[int], sums: np.ndarray, counts: np.ndarray
    ) -> Dict[int, Optional[np.ndarray]]:
        """Take deleted crops (their feature ``sums`` and ``counts`` per tid) out of their
        tracklets, in the open transaction, after the crops' rows are gone: the span is
        recomputed from the remaining crops, an emptied tracklet is removed. Returns the changed
        tracklets' features (None: removed)."""
        db = self._db
        changed: Dict[int, Optional[np.ndarray]] = {}
        for tid, s_del, c_del in zip(tids, sums, counts.tolist()):
            n, s, cam, trk = db.execute(
                "SELECT n, sum, camera, track_id FROM tracklets WHERE tid=?", (tid,)
            ).fetchone()
            if n - c_del <= 0:
                db.execute(
                    "DELETE FROM identities WHERE key IN (SELECT key FROM tracklets WHERE tid=?)",
                    (tid,),
                )
                db.execute("DELETE FROM tracklets WHERE tid=?", (tid,))
                changed[tid] = None
                continue
            s = np.frombuffer(s, np.float64) - s_del
            t0, t1 = db.execute(
                "SELECT min(ts), max(ts) FROM crops WHERE camera=? AND track_id=?", (cam, trk)
            ).fetchone()
            db.execute(
                "UPDATE tracklets SET n=?, t0=?, t1=?, sum=? WHERE tid=?",
                (int(n - c_del), t0, t1, s.tobytes(), tid),
            )
            changed[tid] = normalize(s)
        return changed

    # -- the rest -------------------------------------------------------------------------

    def _stats(self) -> base.StoreStats:
        """Also the embedded store's ``vector_rows`` (committed, deleted included) and
        ``disk_bytes`` (the folder's files)."""
        self._sync()
        db = self._db
        first, last = db.execute("SELECT min(ts), max(ts) FROM crops").fetchone()
        per = db.execute("SELECT camera, count(*) FROM crops GROUP BY camera ORDER BY camera")
        cams = {int(c): int(m) for c, m in per}
        ntr = db.execute("SELECT count(*) FROM tracklets").fetchone()[0]
        disk = sum(
            os.path.getsize(os.path.join(self.path, f))
            for f in os.listdir(self.path)
            if os.path.isfile(os.path.join(self.path, f))
        )
        return self._stats_of(cams, int(ntr), first, last, vector_rows=self._rows, disk_bytes=disk)

    def _tracklet(self, key: str) -> Optional[Tuple[np.ndarray, TrackletHit]]:
        r = self._db.execute(
            "SELECT key, camera, track_id, t0, t1, n, sum, row FROM tracklets WHERE key=?", (key,)
        ).fetchone()
        if r is None:
            return None
        if r[6] is None:
            feat = self._gather(np.array([r[7]], np.int64))[0]
        else:
            feat = normalize(np.frombuffer(r[6], np.float64))
        return feat, _tracklet_hit(r[:6], 0.0)

    # -- site identities ------------------------------------------------------------------

    def _tracklet_table(
        self,
        flt: base.SearchFilter,
        identities: Optional[List[int]],
        keys: Optional[List[str]],
        features: bool,
    ) -> base.TrackletTable:
        """The filter in SQLite (as a tracklet search's), the identities joined; lists of
        identities or ids in pieces of ``_CHUNK``."""
        self._sync()
        where, params = self._where("tracklet", flt.cameras, flt.after, flt.before)
        sql = (
            "SELECT t.key, camera, track_id, t0, t1, n, coalesce(identity, -1), tid"
            " FROM tracklets t LEFT JOIN identities i ON i.key = t.key"
        )
        pieces: List[Tuple[str, list]] = [("", [])]
        if identities is not None:
            pieces = [
                (f"identity IN ({','.join('?' * len(p))})", list(p))
                for p in chunks(identities, _CHUNK)
            ]
        if keys is not None:
            pieces = [
                (f"t.key IN ({','.join('?' * len(p))})", list(p)) for p in chunks(keys, _CHUNK)
            ]
        rows: Dict[int, tuple] = {}
        for cond, values in pieces:
            conds = [c for c in (where, cond) if c]
            text = sql + (f" WHERE {' AND '.join(conds)}" if conds else "")
            rows.update((r[7], r) for r in self._db.execute(text, params + values))
        found = list(rows.values())
        if identities is not None and keys is not None:
            found = [r for r in found if r[6] in set(identities)]
        feats = None
        if features:
            tv, _ = self._tracklet_matrix()
            feats = tv[np.array([r[7] for r in found], np.int64)] if found else tv[:0]
        return base.TrackletTable.of_rows([r[:7] for r in found], feats)

    def _set_identities(
        self, assign: Dict[str, int], merges: List[Tuple[int, int, float]], next_id: int
    ) -> int:
        """One transaction: identities of tracklets the store holds, merges, next id."""
        with self._transaction() as db:
            held = set()
            keys = list(assign)
            for part in chunks(keys, _CHUNK):
                q = f"SELECT key FROM tracklets WHERE key IN ({','.join('?' * len(part))})"
                held.update(r[0] for r in db.execute(q, part))
            db.executemany(
                "INSERT OR REPLACE INTO identities(key, identity) VALUES (?, ?)",
                ((k, v) for k, v in assign.items() if k in held),
            )
            db.executemany(
                "INSERT OR REPLACE INTO identity_merges(absorbed, into_id, at) VALUES (?, ?, ?)",
                merges,
            )
            db.execute(
                "INSERT INTO meta VALUES('next_identity', ?) ON CONFLICT(key)"
                " DO UPDATE SET value = max(value, excluded.value)",
                (int(next_id),),
            )
        return len(held)

    def _identity_log(self) -> base.IdentityLog:
        self._sync()
        db = self._db
        top = db.execute("SELECT value FROM meta WHERE key='next_identity'").fetchone()
        merges = db.execute("SELECT absorbed, into_id, at FROM identity_merges ORDER BY at, rowid")
        return base.IdentityLog(
            int(top[0]) if top else 1, [(int(a), int(b), float(t)) for a, b, t in merges]
        )

    def _forget_identity(self, identity: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM identities WHERE identity=?", (identity,))
            db.execute(
                "DELETE FROM identity_merges WHERE absorbed=? OR into_id=?", (identity, identity)
            )

    def close(self) -> None:
        """Close the database and the vector file (the store stays as committed)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._vf.close()
                self._lockf.close()
                self._db = None  # type: ignore[assignment]
                self._mm = None
                self._index = self._tv = None


def _hit(r: tuple, distance: float) -> Hit:
    return Hit(
        id=int(r[0]),
        distance=distance,
        camera=int(r[2]),
        timestamp=float(r[3]),
        track_id=int(r[4]),
        frame=int(r[5]),
        box=(float(r[6]), float(r[7]), float(r[8]), float(r[9])),
        path=str(r[10]),
        pid=int(r[11]),
    )


def _tracklet_hit(r: Sequence[Any], distance: float) -> TrackletHit:
    """A tracklet hit from its row's (key, camera, track_id, t0, t1, n)."""
    return TrackletHit(
        tracklet=str(r[0]),
        camera=int(r[1]),
        track_id=int(r[2]),
        start=float(r[3]),
        end=float(r[4]),
        n_crops=int(r[5]),
        distance=distance,
    )


def _top_with_ties(s: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best scores plus every score tied with the k-th."""
    if s.shape[0] <= k:
        return np.arange(s.shape[0])
    kth = np.partition(s, s.shape[0] - k)[s.shape[0] - k]
    return np.nonzero(s >= kth)[0]


def _blocked_topk(
    x: np.ndarray, mask: np.ndarray, q: np.ndarray, k: int, block: int = 65536
) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Exact top-k (+ ties) of ``q @ x[mask].T`` over ``x`` in blocks: rows and scores per query."""
    best = [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(len(q))]
    for b0 in range(0, min(x.shape[0], mask.shape[0]), block):
        m = np.nonzero(mask[b0 : b0 + block])[0]
        if not len(m):
            continue
        rows = m + b0
        sc = q @ np.asarray(x[rows]).T
        for i in range(len(q)):
            r = np.concatenate([best[i][0], rows])
            s = np.concatenate([best[i][1], sc[i]])
            top = _top_with_ties(s, k)
            best[i] = (r[top], s[top])
    return best
