"""The gallery that grows: crops and their tracklets, searchable by feature, camera and time.

    from partreid.store import CropBatch, open_store

    with open_store("site_store/", create=True, info={"dim": 1280, "model": {...}}) as st:
        st.add(CropBatch(ids=..., features=..., camera=..., timestamp=..., track_id=...))
        hits = st.search(queries, k=10, by="tracklet", cameras=[3, 4], after=t0, before=t1)

URIs (``open_store``):

- a folder path: the embedded store (SQLite + a vector file, :mod:`partreid.store.embedded`);
- ``milvus:///abs/path/site.db``: a Milvus Lite file, in this process;
- ``milvus://[user:password@]host:19530[/collection][?index=hnsw&M=16&ef=128]``: a Milvus
  server (collection prefix ``partreid`` unless given), :mod:`partreid.store.milvus`; its
  options (credentials in a token file, the vector index): :mod:`partreid.store.milvus_uri`;
  a local server for trials and tests: :mod:`partreid.store.milvus_server`.

A new backend is one module with an ``open_*(uri, create, info)`` function, a
:class:`GalleryStore` subclass implementing the storage steps its docstring lists, and one line
in ``BACKENDS``. This package is a low layer: it knows arrays and metadata, never models.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Optional

from partreid.store.base import (
    CropBatch,
    GalleryStore,
    Hit,
    IdentityLog,
    IdentityNotFoundError,
    StoreError,
    StoreStats,
    TrackletHit,
    TrackletNotFoundError,
    TrackletTable,
)
from partreid.store.milvus_uri import redact

# URI scheme -> "module:function" opening it; "" is a plain folder path
BACKENDS: Dict[str, str] = {
    "": "partreid.store.embedded:open_embedded",
    "file": "partreid.store.embedded:open_embedded",
    "milvus": "partreid.store.milvus:open_milvus",
}

__all__ = [
    "BACKENDS",
    "CropBatch",
    "GalleryStore",
    "Hit",
    "IdentityLog",
    "IdentityNotFoundError",
    "StoreError",
    "StoreStats",
    "TrackletHit",
    "TrackletNotFoundError",
    "TrackletTable",
    "open_store",
    "redact",
]


def scheme_of(uri: str) -> str:
    """The URI's scheme ('' for a plain path)."""
    scheme, sep, _ = str(uri).partition("://")
    return scheme.lower() if sep else ""


def open_store(
    uri: str, create: bool = False, info: Optional[Dict[str, Any]] = None
) -> GalleryStore:
    """Open (or with ``create=True`` create) the store at ``uri``; ``info`` needs ``"dim"``.

    ``info`` (JSON-able, at least ``{"dim": D, "model": {...}}``) is kept forever from the
    creation on and returned as ``store.info``; opening an existing store with an ``info`` of
    another ``dim`` raises :class:`StoreError`.
    """
    uri = str(uri)
    if not uri.strip():
        raise StoreError("store URI is empty: expected a folder path or milvus://...")
    scheme = scheme_of(uri)
    target = BACKENDS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(BACKENDS) if s)
        raise StoreError(
            f"store URI {redact(uri)!r}: unknown scheme {scheme!r}; expected a folder path or"
            f" one of {known}"
        )
    if info is not None:
        if not isinstance(info, dict) or "dim" not in info:
            raise StoreError(f"store {redact(uri)}: info must be a dict with 'dim', got {info!r}")
        try:
            if int(info["dim"]) < 1:
                raise ValueError
        except (TypeError, ValueError):
            raise StoreError(
                f"store {redact(uri)}: info['dim'] = {info['dim']!r}, expected an int >= 1"
            ) from None
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(uri, create, info)
