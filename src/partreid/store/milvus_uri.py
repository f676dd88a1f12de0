"""What a ``milvus://`` URI asks for: where, which collections, whose credentials, which index.

    milvus:///abs/path/site.db[?OPTIONS]                          Milvus Lite, a local file
    milvus://[USER:PASSWORD@]HOST:PORT[/COLLECTION][?OPTIONS]     a Milvus server

Options (``?a=1&b=2``):

- ``token_file=PATH``: the server's credentials, ``USER:PASSWORD`` (or an API token) on the
  file's first line; instead of credentials in the URI, which process listings show;
- ``index=hnsw|ivf_flat|ivf_sq8|flat`` (a new server store: ``hnsw``; Milvus Lite: ``flat``) and
  its build parameters ``M``, ``efConstruction`` (HNSW) or ``nlist`` (IVF): chosen when the
  store is made and recorded in its meta; ``reindex=1`` rebuilds an existing store's vector
  indexes as asked;
- ``ef`` (HNSW) / ``nprobe`` (IVF): the search's breadth, for this handle (default: recorded);
- ``exact=N``: a filtered subset of at most N rows is searched exactly (default 4096, at most
  16384; 0: never);
- ``recall=R``: the recall@k asked of searches; :meth:`MilvusStore.check_recall` measures it
  against an exact search and says when the store falls short.

Secrets never leave this module in a message: :attr:`MilvusTarget.shown` is the URI with the
password replaced by ``***``, and that is the store's ``uri`` everywhere (errors, logs, stats,
the server page, the audit log).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple
from urllib.parse import parse_qsl, unquote

from partreid.store.base import StoreError

DEFAULT_COLLECTION = "partreid"
USAGE = (
    "expected milvus:///abs/path/file.db (Milvus Lite) or"
    " milvus://[user:password@]host:port[/collection][?index=hnsw&M=16&ef=128]"
)
EXACT_ROWS = 4096  # default: filtered subsets up to this many rows are searched exactly
MAX_LIMIT = 16384  # Milvus's largest top-k (and so the largest exact subset)

# index kind -> (build parameters with their defaults, search parameter, its default)
INDEXES: Dict[str, Tuple[Dict[str, int], Optional[str], int]] = {
    "FLAT": ({}, None, 0),
    "HNSW": ({"M": 16, "efConstruction": 128}, "ef", 128),
    "IVF_FLAT": ({"nlist": 1024}, "nprobe", 32),
    "IVF_SQ8": ({"nlist": 1024}, "nprobe", 32),
}
_LIMITS = {  # integers; the index's own ranges are Milvus's to check (its message is shown)
    "M": (1, 2**31 - 1),
    "efConstruction": (1, 2**31 - 1),
    "nlist": (1, 2**31 - 1),
    "ef": (1, 2**31 - 1),
    "nprobe": (1, 2**31 - 1),
    "exact": (0, MAX_LIMIT),
}
_ALIASES = {"m": "M", "efconstruction": "efConstruction", "ef_construction": "efConstruction"}
_OPTIONS = ("token_file", "index", "reindex", "exact", "recall", *sorted(_LIMITS))


@dataclass(frozen=True)
class IndexSpec:
    """A vector index: ``kind`` (``HNSW``, ...), its build parameters and search parameter."""

    kind: str
    build: Dict[str, int] = field(default_factory=dict)
    search: Dict[str, int] = field(default_factory=dict)

    def record(self) -> Dict[str, Any]:
        """The JSON the store's meta keeps (and ``stats`` shows)."""
        return {"kind": self.kind, **self.build, **self.search}

    @classmethod
    def from_record(cls, rec: Dict[str, Any]) -> IndexSpec:
        """The spec a store's meta recorded."""
        build, key, _ = INDEXES[rec["kind"]]
        return cls(
            rec["kind"],
            {k: int(rec[k]) for k in build if k in rec},
            {key: int(rec[key])} if key and key in rec else {},
        )


@dataclass(frozen=True)
class MilvusTarget:
    """A parsed ``milvus://`` URI (see the module docstring)."""

    kind: str  # "lite" or "server"
    target: str  # the Lite file, or host:port
    prefix: str  # the collections' name prefix
    shown: str  # the URI without its password
    credentials: str = field(default="", repr=False)  # "user:password" or a token; "" none
    index: Optional[str] = None  # asked index kind (upper case), None: the default
    params: Dict[str, int] = field(default_factory=dict)  # asked numeric options
    reindex: bool = False

    def spec(self, recorded: Optional[Dict[str, Any]] = None) -> IndexSpec:
        """The index the URI asks of a store: its kind and parameters where the URI gives
        them, else the ``recorded`` ones (a new store: the defaults). Build parameters that
        differ from the recorded ones need ``reindex=1``; the search one is the handle's."""
        default = "HNSW" if self.kind == "server" else "FLAT"
        kind = self.index or (recorded["kind"] if recorded is not None else default)
        build, key, default = INDEXES[kind]
        old = recorded if recorded is not None and recorded["kind"] == kind else {}
        b = {k: int(self.params.get(k, old.get(k, v))) for k, v in build.items()}
        s = {key: int(self.params.get(key, old.get(key, default)))} if key else {}
        return IndexSpec(kind, b, s)

    @property
    def exact_rows(self) -> int:
        """Filtered subsets up to this many rows are searched exactly."""
        return int(self.params.get("exact", EXACT_ROWS))

    @property
    def recall(self) -> Optional[float]:
        """The recall@k the URI asks for (``recall=0.95``), None when it asks none."""
        ppm = self.params.get("recall_ppm")
        return None if ppm is None else ppm / 1e6


def redact(uri: str) -> str:
    """The URI with any password replaced by ``***`` (for messages)."""
    return re.sub(r"^([A-Za-z]+://[^/@:?]*):[^/@?]*@", r"\1:***@", str(uri))


def _read_token(path: str, shown: str) -> str:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            token = f.readline().strip()
    except OSError as e:
        raise StoreError(f"store {shown}: cannot read token_file {path}: {e.strerror}") from None
    if not token:
        raise StoreError(f"store {shown}: token_file {path} is empty; expected user:password")
    return token


def _options(query: str, shown: str) -> Tuple[Dict[str, int], Optional[str], str, bool]:
    """(numeric options, index kind, token file, reindex) of a URI's query string."""
    params: Dict[str, int] = {}
    index, token_file, reindex = None, "", False
    for raw, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        key = _ALIASES.get(raw.lower(), raw)
        if key == "token_file":
            token_file = value
        elif key == "index":
            index = value.upper()
            if index not in INDEXES:
                kinds = ", ".join(k.lower() for k in INDEXES)
                raise StoreError(f"store {shown}: index={value!r}; expected one of {kinds}")
        elif key == "reindex":
            reindex = value.lower() in ("1", "true", "yes")
        elif key == "recall":
            try:
                r = float(value)
            except ValueError:
                r = -1.0
            if not 0.0 < r <= 1.0:
                raise StoreError(f"store {shown}: recall={value!r}; expected a number in (0, 1]")
            params["recall_ppm"] = int(round(r * 1e6))
        elif key in _LIMITS:
            lo, hi = _LIMITS[key]
            if not re.fullmatch(r"\d{1,10}", value) or not lo <= int(value) <= hi:
                raise StoreError(
                    f"store {shown}: {key}={value!r}; expected an integer in {lo}..{hi}"
                )
            params[key] = int(value)
        else:
            raise StoreError(
                f"store {shown}: unknown option {raw!r}; expected {', '.join(_OPTIONS)}"
            )
    return params, index, token_file, reindex


def parse_milvus_uri(uri: str) -> MilvusTarget:
    """The parts of a ``milvus://`` URI (see the module docstring)."""
    shown = redact(uri)
    rest = uri.split("://", 1)[1] if "://" in uri else ""
    rest, _, query = rest.partition("?")
    params, index, token_file, reindex = _options(query, shown)
    if rest.startswith("/"):
        if rest.endswith("/") or len(rest) < 2:
            raise StoreError(f"store URI {shown!r}: no Milvus Lite file name; {USAGE}")
        if token_file:
            raise StoreError(f"store {shown}: Milvus Lite has no users; drop token_file")
        return MilvusTarget("lite", rest, DEFAULT_COLLECTION, shown, "", index, params, reindex)
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        hostpart = rest
    hostport, _, coll = hostpart.partition("/")
    m = re.fullmatch(r"([A-Za-z0-9.\-_]+|\[[0-9a-fA-F:]+\]):(\d{1,5})", hostport)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise StoreError(f"store URI {shown!r}: no host:port; {USAGE}")
    coll = coll.strip("/") or DEFAULT_COLLECTION
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,200}", coll):
        raise StoreError(
            f"store URI {shown!r}: collection name {coll!r} must be letters, digits and _"
        )
    if at and token_file:
        raise StoreError(f"store {shown}: credentials in the URI and a token_file; give one")
    credentials = unquote(userinfo) if at else ""
    if token_file:
        credentials = _read_token(token_file, shown)
    return MilvusTarget("server", hostport, coll, shown, credentials, index, params, reindex)
