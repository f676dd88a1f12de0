"""What the server computes: upload decoding under limits, query features, search, heat maps.

All model and index work runs on ONE worker thread fed by a queue (:class:`SearchWorker`):
requests that arrive together are batched into one forward pass and one index search, the
event loop never blocks, and the model is never used by two threads at once.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
import warnings
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn

from ..errors import InvalidValueError, PartreidError
from ..inference import Extractor
from ..store.query import MAX_TOPK
from .gallery import ServedGallery

log = logging.getLogger("partreid")

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "PPM", "TIFF")


@dataclass
class ServeLimits:
    """Request limits (all options of ``partreid serve``); the defaults are safe for a LAN."""

    max_upload_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 16_777_216  # 4096 x 4096
    max_topk: int = 100
    default_topk: int = 10
    max_page_size: int = 200
    default_page_size: int = 48
    max_batch: int = 16  # queries per forward pass

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not isinstance(v, int) or v < 1:
                raise InvalidValueError(f"serve limit {k} must be a positive integer, got {v!r}")
        if self.max_topk > MAX_TOPK:
            raise InvalidValueError(
                f"--max-topk {self.max_topk}: at most {MAX_TOPK} results per query"
            )
        if self.default_topk > self.max_topk:
            raise InvalidValueError(
                f"default top-K {self.default_topk} exceeds the top-K limit {self.max_topk}"
            )
        if self.default_page_size > self.max_page_size:
            self.default_page_size = self.max_page_size

    def to_dict(self) -> Dict[str, int]:
        """Plain JSON copy."""
        return asdict(self)


class UploadError(PartreidError, ValueError):
    """A bad upload; ``status`` is the HTTP status (400 not an image, 413 too big, 415 type)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def install_pixel_limit(max_pixels: int) -> None:
    """Make PIL refuse images over ``max_pixels``: the bomb warning becomes an error."""
    Image.MAX_IMAGE_PIXELS = int(max_pixels)
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def decode_upload(data: bytes, limits: ServeLimits, name: str = "upload"):
    """Bytes -> RGB PIL image, or :class:`UploadError` with a message saying what is wrong."""
    if len(data) > limits.max_upload_bytes:
        raise UploadError(
            f"{name} is {len(data)} bytes, more than the limit of {limits.max_upload_bytes}", 413
        )
    if not data:
        raise UploadError(f"{name} is empty; send an image file (JPEG, PNG, ...)", 400)
    bomb = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UploadError(
            f"{name} is not an image that can be read (expected {', '.join(ALLOWED_FORMATS)})",
            400,
        ) from None
    except bomb:
        raise UploadError(
            f"{name} has more pixels than the limit of {limits.max_pixels} (decompression bomb?)",
            413,
        ) from None
    except Exception as exc:  # PIL raises assorted errors on garbage headers
        raise UploadError(f"{name} is truncated or not a readable image ({exc})", 400) from None
    w, h = img.size
    if w * h > limits.max_pixels:
        raise UploadError(
            f"{name} is {w} x {h} = {w * h} pixels, more than the limit of {limits.max_pixels}",
            413,
        )
    if img.format not in ALLOWED_FORMATS:
        raise UploadError(
            f"{name} is a {img.format} image; accepted formats: {', '.join(ALLOWED_FORMATS)}", 415
        )
    try:
        img.load()
        return img.convert("RGB")
    except bomb:
        raise UploadError(
            f"{name} has more pixels than the limit of {limits.max_pixels}", 413
        ) from None
    except Exception as exc:
        raise UploadError(
            f"{name} is a truncated or corrupt {img.format} image ({exc})", 400
        ) from None


def heatmap_png(maps: Dict[str, Any], height: int, width: int) -> bytes:
    """Combine named (h, w) maps into one jet heat map PNG of ``height`` x ``width``.

    Each map is upsampled bilinearly, min-max normalised, and the maps are averaged (each
    branch counts once), then normalised again.
    """
    acc = torch.zeros(height, width)
    for m in maps.values():
        m = m.detach().float().cpu().reshape(1, 1, *m.shape[-2:])
        m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        acc += (m - m.min()) / (m.max() - m.min() + 1e-12)
    acc = (acc - acc.min()) / (acc.max() - acc.min() + 1e-12)
    x = acc.numpy()
    rgb = np.stack(
        [np.clip(1.5 - np.abs(4 * x - k), 0, 1) for k in (3, 2, 1)], axis=-1
    )  # the "jet" colour map
    buf = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue()


@dataclass
class _Job:
    kind: str  # "image" | "feature" | "heatmap" | "embed"
    data: Any  # preprocessed tensor (image, heatmap, embed) or feature row (feature)
    topk: int
    rerank: bool
    future: Future


def _settle(job: _Job, fn, *args) -> None:
    """Give ``job``'s future the result of ``fn(*args)``, or the exception it raised."""
    try:
        job.future.set_result(fn(*args))
    except Exception as exc:
        job.future.set_exception(exc)


class SearchWorker:
    """The model (an :class:`~partreid.inference.Extractor`), the gallery, one worker thread.

    Without a gallery (``gallery=None``, a server over a store) only :meth:`submit_embed` and
    :meth:`submit_heatmap` work: the worker batches the model's forward passes, the store
    searches."""

    def __init__(
        self,
        extractor: Extractor,
        gallery: Optional[ServedGallery],
        limits: ServeLimits,
        module: Optional[nn.Module] = None,
    ):
        self.extractor = extractor
        self.gallery = gallery
        self.limits = limits
        self.module = module if module is not None and hasattr(module, "activation_maps") else None
        # the checkpoint's description, also when the forward pass runs on its ONNX export
        self.info = module.info if module is not None else extractor.info
        self.runtime = getattr(extractor, "backend", "torch")  # torch, onnxruntime or openvino
        self.transform = self.info.transform()
        if gallery is not None:
            gallery.features.check_dim(
                int(extractor.feature_dim), f"the model ({self.info.name})", gallery.source
            )
        self._queue: queue.Queue = queue.Queue()
        self._stats = {"batches": 0, "queries": 0, "model_s": 0.0, "search_s": 0.0, "busy_s": 0.0}
        self._stats_lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="partreid-search", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- public, any thread
    @property
    def has_heatmap(self) -> bool:
        """Whether the model exposes ``activation_maps`` (checkpoints only, not ONNX)."""
        return self.module is not None

    def model_summary(self) -> Dict[str, Any]:
        """Name, input size, feature dimension, checkpoint (JSON-ready)."""
        info = self.info
        return {
            "name": info.name,
            "backbone": info.model_cfg.get("backbone"),
            "input": [info.height, info.width],
            "feature_dim": int(self.extractor.feature_dim),
            "checkpoint": getattr(info, "path", "") or "",
            "heatmap": self.has_heatmap,
            "runtime": self.runtime,
        }

    def stats(self) -> Dict[str, Any]:
        """Worker counters since start: batches, queries, mean batch, seconds in model/search."""
        with self._stats_lock:
            st = dict(self._stats)
        st["mean_batch"] = st["queries"] / st["batches"] if st["batches"] else 0.0
        st["pending"] = self._queue.qsize()
        return st

    def preprocess(self, img: Any) -> torch.Tensor:
        """RGB PIL image -> normalised (3, H, W) tensor."""
        return self.transform(img)

    def submit_image(self, tensor, topk: int, rerank: bool) -> Future:
        """Search with a preprocessed query image; the future gives (distances, indices)."""
        return self._submit(_Job("image", tensor, topk, rerank, Future()))

    def submit_feature(self, feature: np.ndarray, topk: int, rerank: bool) -> Future:
        """Search with a feature row (a gallery item as query)."""
        return self._submit(_Job("feature", feature, topk, rerank, Future()))

    def submit_embed(self, tensor) -> Future:
        """The feature row of a preprocessed query image (batched with other requests)."""
        return self._submit(_Job("embed", tensor, 0, False, Future()))

    def submit_heatmap(self, tensor) -> Future:
        """The query's combined activation map as PNG bytes."""
        if not self.has_heatmap:
            raise UploadError(f"model {self.info.name} has no activation maps", 400)
        return self._submit(_Job("heatmap", tensor, 0, False, Future()))

    def close(self) -> None:
        """Stop the worker thread (pending jobs are finished first)."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    # ---------------------------------------------------------------- worker thread
    def _submit(self, job: _Job) -> Future:
        if not self._thread.is_alive():
            raise RuntimeError("the search worker has stopped")
        self._queue.put(job)
        return job.future

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < self.limits.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                jobs.append(nxt)
            t0 = time.perf_counter()
            try:
                with torch.inference_mode():
                    self._run(jobs)
            except Exception as exc:  # never let the worker die; each waiting request gets it
                log.exception("search worker: batch of %d failed", len(jobs))
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
            with self._stats_lock:
                self._stats["batches"] += 1
                self._stats["queries"] += len(jobs)
                self._stats["busy_s"] += time.perf_counter() - t0

    def _run(self, jobs: List[_Job]) -> None:
        for j in [j for j in jobs if j.kind == "heatmap"]:
            _settle(j, self._heatmap, j.data)
        searches = [j for j in jobs if j.kind != "heatmap"]
        if not searches:
            return
        images = [j for j in searches if j.kind in ("image", "embed")]
        feats: Dict[int, np.ndarray] = {}
        t0 = time.perf_counter()
        if images:
            out = np.asarray(self.extractor([j.data for j in images]), dtype=np.float32)
            feats.update({id(j): out[r] for r, j in enumerate(images)})
        for j in searches:
            if j.kind == "feature":
                feats[id(j)] = np.asarray(j.data, dtype=np.float32)
        t1 = time.perf_counter()
        for j in [j for j in searches if j.kind == "embed"]:
            j.future.set_result(feats[id(j)].copy())
        searches = [j for j in searches if j.kind != "embed"]
        groups: Dict[Tuple[int, bool], List[_Job]] = {}
        for j in searches:
            groups.setdefault((j.topk, j.rerank), []).append(j)
        for (topk, rerank), group in groups.items():
            q = np.stack([feats[id(j)] for j in group])
            try:
                if self.gallery is None:
                    raise RuntimeError("this worker has no gallery to search (a store server)")
                dist, idx = self.gallery.index.search(q, topk=topk, rerank=rerank)
            except Exception as exc:
                for j in group:
                    j.future.set_exception(exc)
                continue
            for r, j in enumerate(group):
                j.future.set_result((np.asarray(dist[r]), np.asarray(idx[r])))
        with self._stats_lock:
            self._stats["model_s"] += t1 - t0
            self._stats["search_s"] += time.perf_counter() - t1

    def _heatmap(self, tensor) -> bytes:
        dev = next(self.module.parameters()).device
        maps = self.module.activation_maps(tensor.unsqueeze(0).to(dev))
        scale = max(1, 256 // self.info.height)
        return heatmap_png(
            {k: v[0] for k, v in maps.items()}, self.info.height * scale, self.info.width * scale
        )
