"""``partreid index`` and ``partreid search``: the two commands around :class:`GalleryIndex`.

    partreid index gallery.npz --out gallery.index [--kind ivfpq --nprobe 32]
    partreid search gallery.index query.jpg --topk 10 --out results.json

A query is a features file, an image or a folder of images; images go through
:class:`partreid.inference.Extractor` with the checkpoint the gallery was extracted with
(``--checkpoint`` to use another). Query features of another model than the gallery's are
refused by the one rule of :mod:`partreid.utils.model_match`.  Results: one row per (query, rank) with the gallery row,
its path, the distance and the identity / camera where known.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from typing import Any, Dict, List, Optional

import numpy as np

from ..data.io import IMAGE_EXTENSIONS
from ..data.names import market_labels
from ..errors import NotFoundError
from ..features import Features
from ..index import GalleryIndex, GalleryIndexError, open_gallery
from ..inference import Extractor
from ..utils.logs import setup_logging
from ..utils.model_match import ModelDescription, check_same_model

log = logging.getLogger("partreid")


def index_command(feats_path: str, out: str, **options: Any) -> GalleryIndex:
    """``partreid index FEATS --out INDEX``: build an index of a features file and save it
    (``options``: those of :meth:`GalleryIndex.build`; None leaves one at its default)."""
    setup_logging()
    options = {k: v for k, v in options.items() if v is not None}
    index = GalleryIndex.build(Features.load(feats_path), **options)
    index.save(out)
    print(f"{index.describe()}\nsaved to {out}")
    return index


def load_queries(
    query: str,
    index: GalleryIndex,
    checkpoint: Optional[str] = None,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int = 2,
) -> Features:
    """The query features: a features ``.npz`` as it is, an image or folder through Extractor."""
    if not os.path.exists(query):
        raise NotFoundError(
            f"query not found: {query} (a features .npz, an image or a folder of images)"
        )
    gmeta = index.features.meta
    gallery = ModelDescription.from_record(gmeta, index.dim)
    if os.path.isfile(query) and query.lower().endswith(".npz"):
        q = Features.load(query)
        check_same_model(
            gallery,
            "the gallery index",
            ModelDescription.from_record(q.meta, q.dim),
            f"the query features file {query}",
            "extract the queries with the checkpoint the gallery was extracted with",
        )
        return q
    if os.path.isfile(query) and not query.lower().endswith(IMAGE_EXTENSIONS):
        raise GalleryIndexError(
            f"query {query}: expected a features .npz, an image ({', '.join(IMAGE_EXTENSIONS)}) "
            "or a folder of images"
        )
    ckpt = checkpoint or gmeta.get("checkpoint")
    if not ckpt:
        raise GalleryIndexError(
            "the gallery's features do not say which checkpoint made them (no meta.checkpoint); "
            "pass --checkpoint CKPT to extract the query images"
        )
    if not os.path.isfile(ckpt):
        raise NotFoundError(
            f"checkpoint not found: {ckpt}"
            + ("" if checkpoint else " (recorded in the gallery's features; pass --checkpoint)")
        )
    ext = Extractor(
        ckpt,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        flip=bool(gmeta.get("flip", True)),
        progress=False,
    )
    check_same_model(
        gallery,
        "the gallery index",
        ModelDescription.of_model(ext.info, ext.feature_dim, ext.source_path),
        "the query's checkpoint",
        "use the checkpoint the gallery was extracted with (--checkpoint)",
    )
    q = ext.extract(query)
    if os.path.isfile(query) and (q.pids < 0).all():
        # a single image: identity and camera from a Market-style name, as extract does for folders
        labels = market_labels([query])
        if labels:
            q.pids[:], q.camids[:] = labels[0][0], labels[1][0]
    return q


def search_rows(
    index: GalleryIndex,
    queries: Features,
    topk: int,
    rerank: bool = False,
    skip_same_camera: bool = False,
    **search_params: Any,
) -> List[Dict[str, Any]]:
    """One record per query: its source and the ranked matches (JSON-ready).

    ``skip_same_camera`` leaves out gallery rows of the query's identity taken by the query's
    camera (what the evaluation protocol and eval's ranked lists ignore); queries of unknown
    identity or camera keep every row.
    """
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
        raise GalleryIndexError(f"topk must be a positive integer, got {topk!r}")
    g = index.features
    extra = 0
    known = (queries.pids >= 0) & (queries.camids >= 0)
    if skip_same_camera and known.any():
        pairs = {}
        for p, c in zip(g.pids.tolist(), g.camids.tolist()):
            pairs[(p, c)] = pairs.get((p, c), 0) + 1
        extra = max(
            (pairs.get((p, c), 0) for p, c, k in zip(queries.pids, queries.camids, known) if k),
            default=0,
        )
    dist, idx = index.search(queries.features, topk + extra, rerank=rerank, **search_params)
    records = []
    for r in range(len(queries)):
        qp, qc = int(queries.pids[r]), int(queries.camids[r])
        matches = []
        for d, j in zip(dist[r].tolist(), idx[r].tolist()):
            if j < 0:
                continue
            if skip_same_camera and known[r] and g.pids[j] == qp and g.camids[j] == qc:
                continue
            m = {"rank": len(matches) + 1, "gallery_row": int(j), "path": str(g.paths[j])}
            m["distance"] = float(d)
            if g.pids[j] >= 0:
                m["pid"] = int(g.pids[j])
            if g.camids[j] >= 0:
                m["camid"] = int(g.camids[j])
            matches.append(m)
            if len(matches) == topk:
                break
        rec: Dict[str, Any] = {"query_row": r, "query": str(queries.paths[r])}
        if qp >= 0:
            rec["query_pid"] = qp
        if qc >= 0:
            rec["query_camid"] = qc
        rec["matches"] = matches
        records.append(rec)
    return records


CSV_COLUMNS = (
    "query_row",
    "query",
    "query_pid",
    "query_camid",
    "rank",
    "gallery_row",
    "path",
    "distance",
    "pid",
    "camid",
)


def write_results(path: str, records: List[Dict[str, Any]], header: Dict[str, Any]) -> str:
    """Write ``records`` as JSON (``.json``: header + results) or CSV (``.csv``: one row per match)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".json", ".csv"):
        raise GalleryIndexError(f"--out {path}: expected a .json or .csv file name")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        if ext == ".json":
            json.dump({**header, "results": records}, f, indent=1)
        else:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            for rec in records:
                q = {k: rec.get(k, "") for k in CSV_COLUMNS[:4]}
                for m in rec["matches"]:
                    w.writerow({**q, **{k: m.get(k, "") for k in CSV_COLUMNS[4:]}})
    os.replace(tmp, path)
    return path


def search_command(
    index_path: str,
    query: str,
    topk: int = 10,
    checkpoint: Optional[str] = None,
    rerank: bool = False,
    out: Optional[str] = None,
    skip_same_camera: bool = False,
    backend: str = "auto",
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int = 2,
    **search_params: Any,
) -> List[Dict[str, Any]]:
    """``partreid search INDEX QUERY``: top-K per query, printed or written to ``out``."""
    setup_logging()
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise GalleryIndexError(f"--topk must be a positive integer, got {topk!r}")
    if out is not None and os.path.splitext(out)[1].lower() not in (".json", ".csv"):
        raise GalleryIndexError(f"--out {out}: expected a .json or .csv file name")
    index = open_gallery(index_path, backend=backend, device=device)
    queries = load_queries(query, index, checkpoint, device, batch_size, num_workers)
    if len(queries) == 0:
        raise GalleryIndexError(f"{query}: no query features (an empty file or folder)")
    search_params = {k: v for k, v in search_params.items() if v is not None}
    records = search_rows(index, queries, topk, rerank, skip_same_camera, **search_params)
    header = {
        "index": os.path.abspath(index_path),
        "query": os.path.abspath(query),
        "index_description": index.describe(),
        "metric": index.metric,
        "normalize": index.normalize,
        "topk": topk,
        "rerank": bool(rerank),
        "distance": "k-reciprocal re-ranked" if rerank else index.metric,
        "skip_same_camera": bool(skip_same_camera),
    }
    if out:
        write_results(out, records, header)
        print(f"{len(records)} queries x top-{topk} from {index.describe()} -> {out}")
    else:
        for rec in records:
            who = ", ".join(
                f"{k.split('_')[1]} {rec[k]}" for k in ("query_pid", "query_camid") if k in rec
            )
            print(f"query {rec['query_row']}: {rec['query']}" + (f" ({who})" if who else ""))
            for m in rec["matches"]:
                print(
                    f"  {m['rank']:>3}  {m['distance']:.6g}  row {m['gallery_row']}  {m['path']}"
                    + (f"  pid {m['pid']}" if "pid" in m else "")
                    + (f"  cam {m['camid']}" if "camid" in m else "")
                )
    return records
