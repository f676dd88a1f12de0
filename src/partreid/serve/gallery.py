"""The gallery a server searches: loading (folder / features file / index), caching, paging, files.

``--gallery`` may be

* a folder of crops: extracted with the model and indexed at start-up, then cached in
  ``CACHE/<key>/`` where the key hashes the checkpoint (path, size, mtime) and the folder's
  image list (relative path, size, mtime), so a restart on the same files reuses the work and
  any added, removed or touched image (or a new checkpoint) makes a fresh one;
* a features file from ``partreid extract`` (``.npz``), indexed exactly at start-up;
* an index folder from ``partreid index``.

Images are served only when they are gallery items and their real path (symlinks resolved)
lies inside the gallery's image root; anything else is a :class:`GalleryPathError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..data.io import list_image_files
from ..errors import NotFoundError, PartreidError
from ..features import Features
from ..index import GalleryIndex, open_gallery
from ..utils.cache import cache_dir
from ..utils.private import make_private_dir

log = logging.getLogger("partreid")

INDEX_MARKER = "index.json"  # what GalleryIndex.save writes into an index folder


class GalleryPathError(PartreidError, ValueError):
    """A gallery image request that is malformed, leaves the gallery, or names no gallery item.

    ``status`` is the HTTP status it maps to (400 malformed, 403 outside, 404 unknown).
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/partreid/serve`` (``~/.cache/partreid/serve``)."""
    return cache_dir("serve")


def list_images(folder: str) -> List[Tuple[str, int, int]]:
    """``(relative posix path, size, mtime_ns)`` of every image under ``folder``, sorted (the
    files ``Extractor.extract`` reads: :func:`partreid.data.io.list_image_files`)."""
    out: List[Tuple[str, int, int]] = []
    for path in list_image_files(folder)[0]:
        st = os.stat(path)
        out.append((os.path.relpath(path, folder).replace(os.sep, "/"), st.st_size, st.st_mtime_ns))
    out.sort()
    return out


def cache_key(checkpoint: str, folder: str, files: List[Tuple[str, int, int]]) -> str:
    """Hash of the checkpoint (real path, size, mtime) and the folder's image list."""
    st = os.stat(checkpoint)
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [os.path.realpath(checkpoint), st.st_size, st.st_mtime_ns, os.path.realpath(folder)]
        ).encode()
    )
    for rel, size, mtime in files:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:24]


def _is_index_folder(path: str) -> bool:
    """An index saved by ``GalleryIndex.save`` (it holds ``index.json``)."""
    return os.path.isfile(os.path.join(path, INDEX_MARKER))


@dataclass
class ServedGallery:
    """A loaded :class:`~partreid.index.GalleryIndex` plus what the server needs."""

    index: Any  # partreid.index.GalleryIndex
    source: str  # what --gallery named
    source_kind: str  # "folder" | "features" | "index"
    root: Optional[str]  # real path of the folder images are served from (None: not served)
    cached: bool = False  # a folder's features/index came from the cache
    cache_path: Optional[str] = None
    rel_paths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    _by_rel: Dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        feats = self.index.features
        paths = [str(p) for p in feats.paths]
        if self.root is not None:
            rels = [
                os.path.relpath(os.path.abspath(p), self.root).replace(os.sep, "/") for p in paths
            ]
        else:
            rels = paths
        self.rel_paths = np.asarray(rels, dtype=str) if rels else np.zeros(0, dtype=str)
        self._by_rel = {r: i for i, r in enumerate(rels)}
        self.pids = np.asarray(feats.pids, dtype=np.int64)
        self.camids = np.asarray(feats.camids, dtype=np.int64)
        cams = np.unique(self.camids)
        pids = np.unique(self.pids)
        self._cameras = [int(c) for c in cams if c >= 0]
        self._num_identities = int((pids >= 0).sum())

    def __len__(self) -> int:
        return len(self.index)

    @property
    def features(self):
        """The gallery's :class:`~partreid.features.Features`."""
        return self.index.features

    def summary(self) -> Dict[str, Any]:
        """Size, metric, index kind, cameras and identities (JSON-ready)."""
        return {
            "size": len(self),
            "source": self.source,
            "source_kind": self.source_kind,
            "metric": getattr(self.index, "metric", None),
            "kind": getattr(self.index, "kind", None),
            "backend": getattr(self.index, "backend", None),
            "feature_dim": int(self.features.dim) if len(self) else 0,
            "cameras": self._cameras,
            "num_identities": self._num_identities,
            "identities_known": self._num_identities > 0,
            "images_served": self.root is not None,
            "cached": self.cached,
        }

    def item(self, i: int) -> Dict[str, Any]:
        """One gallery row as JSON (index, relative path, pid, camid, image URL)."""
        return {
            "index": int(i),
            "path": str(self.rel_paths[i]),
            "pid": int(self.pids[i]),
            "camid": int(self.camids[i]),
            "image_url": f"/api/gallery/{int(i)}/image",
        }

    def check_index(self, i: int) -> int:
        """``i`` if it is a gallery row, else a 404 :class:`GalleryPathError`."""
        if not 0 <= i < len(self):
            raise GalleryPathError(
                f"gallery item {i} does not exist (the gallery has {len(self)} items, 0..{len(self) - 1})",
                404,
            )
        return i

    def page(
        self,
        offset: int,
        limit: int,
        camid: Optional[int] = None,
        pid: Optional[int] = None,
    ) -> Tuple[int, np.ndarray]:
        """``(total matching, row indices of [offset, offset+limit))`` with optional filters."""
        if camid is None and pid is None:
            total = len(self)
            return total, np.arange(min(offset, total), min(offset + limit, total))
        mask = np.ones(len(self), dtype=bool)
        if camid is not None:
            mask &= self.camids == camid
        if pid is not None:
            mask &= self.pids == pid
        rows = np.flatnonzero(mask)
        return len(rows), rows[offset : offset + limit]

    def _confined(self, rel: str) -> str:
        if self.root is None:
            raise GalleryPathError(
                f"this gallery ({self.source}) has no image folder to serve from", 404
            )
        full = os.path.realpath(os.path.join(self.root, rel))
        if not full.startswith(self.root.rstrip(os.sep) + os.sep):
            raise GalleryPathError(
                f"{rel!r} resolves outside the gallery folder (a symbolic link out of it); refused",
                403,
            )
        if not os.path.isfile(full):
            raise GalleryPathError(f"gallery image {rel!r} is missing on disk", 404)
        return full

    def image_file(self, i: int) -> str:
        """The real path of row ``i``'s image, confined to the gallery folder."""
        return self._confined(str(self.rel_paths[self.check_index(i)]))

    def resolve(self, path: str) -> Tuple[int, str]:
        """``(row, real file)`` for a gallery-relative ``path``; refuses anything that leaves."""
        if not path or "\0" in path:
            raise GalleryPathError("empty or invalid image path", 400)
        p = path.replace("\\", "/")
        if p.startswith("/") or os.path.isabs(path) or (len(p) > 1 and p[1] == ":"):
            raise GalleryPathError(
                f"{path!r} is an absolute path; give a path relative to the gallery folder", 400
            )
        if ".." in p.split("/"):
            raise GalleryPathError(
                f"{path!r} contains '..'; paths must stay inside the gallery folder", 400
            )
        rel = posixpath.normpath(p)
        if rel not in self._by_rel:
            raise GalleryPathError(f"{path!r} is not an image of this gallery", 404)
        i = self._by_rel[rel]
        return i, self._confined(rel)


def _image_root(feats, source: str) -> Optional[str]:
    """Where a features file's images live: its ``meta['source']`` folder, else their common
    parent folder; ``None`` when the paths are not image files on this machine."""
    src = feats.meta.get("source")
    if isinstance(src, str) and os.path.isdir(src):
        return os.path.realpath(src)
    if not len(feats):
        return None
    dirs = {os.path.dirname(os.path.abspath(str(p))) for p in feats.paths}
    try:
        common = os.path.commonpath(sorted(dirs))
    except ValueError:
        return None
    if not os.path.isdir(common):
        log.warning(
            "gallery %s: its images' folder %s does not exist here; images will not be shown",
            source,
            common,
        )
        return None
    return os.path.realpath(common)


def load_gallery(
    gallery: str,
    checkpoint: str,
    extractor_factory: Callable[[], Any],
    cache_dir: Optional[str] = None,
) -> ServedGallery:
    """Open ``gallery`` (crop folder, features ``.npz`` or index folder) for serving.

    ``extractor_factory()`` returns the :class:`~partreid.inference.Extractor` used to extract
    a folder (called only when the cache does not already hold it).
    """
    if not os.path.exists(gallery):
        raise NotFoundError(
            f"gallery not found: {gallery} (expected a folder of crops, a features .npz from "
            "`partreid extract`, or an index folder from `partreid index`)"
        )
    if os.path.isfile(gallery):
        index = open_gallery(gallery)
        return ServedGallery(index, gallery, "features", _image_root(index.features, gallery))
    if _is_index_folder(gallery):
        index = open_gallery(gallery)
        return ServedGallery(index, gallery, "index", _image_root(index.features, gallery))
    return _load_folder(gallery, checkpoint, extractor_factory, cache_dir or default_cache_dir())


def _load_folder(
    gallery: str, checkpoint: str, extractor_factory: Callable[[], Any], cache_dir: str
) -> ServedGallery:
    """A crop folder: its index from the cache, else its features from the cache (or extracted
    now) indexed and cached."""
    folder = os.path.realpath(gallery)
    t0 = time.time()
    files = list_images(folder)
    if not files:
        raise NotFoundError(
            f"gallery folder {gallery} holds no images and is not an index folder from "
            f"`partreid index` (no {INDEX_MARKER})"
        )
    cache = os.path.join(cache_dir, cache_key(checkpoint, folder, files))
    index = _cached_index(gallery, cache)
    if index is not None:
        return ServedGallery(index, gallery, "folder", folder, cached=True, cache_path=cache)
    feats, cached = _folder_features(gallery, folder, len(files), extractor_factory, cache)
    index = GalleryIndex.build(feats)
    index.save(os.path.join(cache, "index"))
    with open(os.path.join(cache, "source.json"), "w") as f:
        json.dump(
            {
                "gallery": folder,
                "checkpoint": os.path.realpath(checkpoint),
                "images": len(files),
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
            f,
            indent=2,
        )
    log.info(
        "gallery %s: %d items indexed in %.1f s (%s)", gallery, len(index), time.time() - t0, cache
    )
    return ServedGallery(index, gallery, "folder", folder, cached=cached, cache_path=cache)


def _cached_index(gallery: str, cache: str) -> Optional[GalleryIndex]:
    """The index cached in ``cache``; ``None`` when there is none or it is unreadable."""
    index_dir = os.path.join(cache, "index")
    if not os.path.isdir(index_dir):
        return None
    try:
        index = GalleryIndex.load(index_dir)
    except Exception as exc:  # a broken cache entry is rebuilt, and said so
        log.warning("gallery cache %s is unreadable (%s); rebuilding it", cache, exc)
        return None
    log.info("gallery %s: %d images, features and index reused from %s", gallery, len(index), cache)
    return index


def _folder_features(
    gallery: str, folder: str, count: int, extractor_factory: Callable[[], Any], cache: str
) -> Tuple[Features, bool]:
    """``(features, whether they came from the cache)``: extracted and saved in ``cache`` when
    it does not hold them yet."""
    feats_file = os.path.join(cache, "features.npz")
    if os.path.isfile(feats_file):
        feats = Features.load(feats_file)
        log.info("gallery %s: features reused from %s", gallery, feats_file)
        return feats, True
    log.info(
        "gallery %s: extracting features of %d images (once; cached in %s)", gallery, count, cache
    )
    feats = extractor_factory().extract(folder)
    make_private_dir(cache)  # the crops' features: readable by their owner only, as a store
    feats.save(feats_file)
    return feats, False
