"""The occlusion-robustness sweep: the test repeated with altered queries (and gallery).

The gallery's features are extracted once (unless ``alter_gallery``) and the clean queries'
once; each ``(kind, severity)`` point re-extracts only the altered query images
(``partreid.data.occlusion``) and ranks them with the run's own ``eval:`` settings (distance,
normalisation, query expansion, re-ranking), so severity 0 reproduces the clean evaluation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import metrics as M
from ..data.io import Item, read_image
from ..data.loader import build_test_loader, collate_batch
from ..data.occlusion import (
    AlteredImageDataset,
    DonorPool,
    alter,
    check_kinds,
    check_severities,
    image_key,
)
from ..errors import InvalidValueError
from ..report.robustness import (
    draw_example_strip,
    draw_robustness_curves,
    format_robustness_table,
)
from .evaluator import distances, extract_features
from .setup import EvalTarget

log = logging.getLogger("partreid")

POINT_METRICS = ("rank1", "rank5", "mAP", "mINP")


def _rank_metrics(distmat, q_pids, g_pids, q_cams, g_cams) -> Dict[str, Any]:
    """The sweep's metrics of one distance matrix, each query's AP (``ap``) among them."""
    return M.rank_summary(M.evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, per_query=True))


def _ap_list(ap: np.ndarray) -> List[Optional[float]]:
    """Per-query APs for metrics.json: 5 decimals, None for queries without a valid match."""
    return [None if np.isnan(v) else round(float(v), 5) for v in ap]


def query_digest(query: Sequence[Item]) -> str:
    """A short fingerprint of the query list (file names, identities, cameras, in order): runs
    with the same digest were asked the same queries, so their per-query APs pair up."""
    h = hashlib.sha1()
    for path, pid, cam in query:
        h.update(f"{os.path.basename(path)}|{int(pid)}|{int(cam)}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class _Extractor:
    """The model and settings the sweep extracts every image list with."""

    model: Any
    transform: Any
    eval_cfg: Any
    device: torch.device
    num_workers: int
    amp: bool

    def clean(self, items: Sequence[Item]) -> Tuple[Any, Any, Any]:
        """``(features, pids, camids)`` of the unaltered images, as the test loader reads them."""
        loader = build_test_loader(
            items, self.transform, self.eval_cfg.batch_size, self.num_workers, pin_memory=False
        )
        return self._extract(loader)

    def altered(
        self, items: Sequence[Item], kind: str, severity: float, seed: int, donors, prefix: str
    ):
        """The features of ``items`` altered by ``kind`` at ``severity``."""
        ds = AlteredImageDataset(items, kind, severity, seed, donors, self.transform, prefix)
        loader = DataLoader(
            ds,
            batch_size=int(self.eval_cfg.batch_size),
            shuffle=False,
            num_workers=int(self.num_workers),
            collate_fn=collate_batch,
        )
        return self._extract(loader)[0]

    def _extract(self, loader):
        return extract_features(
            self.model, loader, self.device, flip=self.eval_cfg.flip, amp=self.amp
        )


def _clean_features(ex: _Extractor, query, gallery, clean_features) -> Tuple[tuple, tuple]:
    """The clean query's and gallery's ``(features, pids, camids)``: the evaluation's own when
    it handed them over (for this query list), else extracted."""
    if clean_features and len(clean_features["query"][0]) == len(query):
        return clean_features["query"], clean_features["gallery"]
    gal = ex.clean(gallery)
    return ex.clean(query), gal


def _log_points(name: str, kind: str, points: Sequence[Dict[str, float]]) -> None:
    log.info(
        "%s robustness %s: %s",
        name,
        kind,
        "  ".join(
            f"{r['severity']:g}: R1 {100 * r['rank1']:.1f} mAP {100 * r['mAP']:.1f}" for r in points
        ),
    )


def robustness_sweep(
    model,
    query: Sequence[Item],
    gallery: Sequence[Item],
    transform,
    eval_cfg,
    device: torch.device,
    kinds: Sequence[str],
    severities: Sequence[float],
    seed: int = 0,
    donors: Optional[DonorPool] = None,
    alter_gallery: bool = False,
    num_workers: int = 0,
    amp: bool = False,
    name: str = "test",
    clean_features: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Evaluate ``model`` with the query images altered by each kind at each severity.

    ``clean_features`` (``{"query": (f, pids, camids), "gallery": ...}`` as filled by
    :func:`~partreid.engine.evaluator.evaluate`) saves extracting the clean images again.

    Returns the robustness dict stored in ``metrics.json`` (see ``partreid.report.robustness``):
    ``clean`` metrics, and ``results[kind]`` = one ``{severity, rank1, rank5, mAP, mINP}`` per
    severity; ``per_query_ap`` holds each query's AP (``clean``: one list; each kind: one list
    per severity) and ``query_digest`` names the query list, so ``partreid compare`` can give
    confidence intervals paired over queries. ``donors`` lends the ``person_*`` occluders their
    content (training images of other identities); it is required when such a kind is asked.
    """
    kinds = check_kinds(kinds)
    severities = check_severities(severities)
    if any(k.startswith("person_") for k in kinds) and donors is None:
        raise InvalidValueError("person_* kinds need a DonorPool of training images (donors=...)")
    t0 = time.time()
    ex = _Extractor(model, transform, eval_cfg, device, num_workers, amp)
    (qf, q_pids, q_cams), (gf, g_pids, g_cams) = _clean_features(ex, query, gallery, clean_features)

    def score(aq, ag) -> Dict[str, Any]:
        return _rank_metrics(distances(aq, ag, eval_cfg), q_pids, g_pids, q_cams, g_cams)

    clean = score(qf, gf)
    results: Dict[str, List[Dict[str, float]]] = {}
    per_query: Dict[str, Any] = {"clean": _ap_list(clean["ap"])}
    for kind in kinds:
        results[kind], per_query[kind] = [], []
        for s in severities:
            aq = ex.altered(query, kind, s, seed, donors, "query:")
            ag = (
                ex.altered(gallery, kind, s, seed, donors, "gallery:")
                if alter_gallery and s > 0
                else gf
            )
            m = score(aq, ag)
            results[kind].append({"severity": s, **{k: m[k] for k in POINT_METRICS}})
            per_query[kind].append(_ap_list(m["ap"]))
        _log_points(name, kind, results[kind])
    return {
        "dataset": name,
        "seed": int(seed),
        "alter_gallery": bool(alter_gallery),
        "kinds": list(kinds),
        "severities": list(severities),
        "clean": {k: clean[k] for k in POINT_METRICS},
        "results": results,
        "per_query_ap": per_query,
        "query_digest": query_digest(query),
        "num_query": len(query),
        "num_gallery": len(gallery),
        "num_valid_queries": clean["num_valid_queries"],
        "donors": None
        if donors is None
        else {"images": len(donors), "excluded": donors.num_excluded},
        "seconds": round(time.time() - t0, 1),
    }


def example_rows(
    query: Sequence[Item],
    kinds: Sequence[str],
    severities: Sequence[float],
    seed: int,
    donors: Optional[DonorPool],
    num: int = 2,
) -> Tuple[List[Tuple[str, list]], List[str]]:
    """Rows ``(label, [clean, altered at each severity])`` for ``num`` evenly spread queries,
    exactly as the sweep altered them; and the column titles."""
    idx = np.linspace(0, len(query) - 1, num=min(num, len(query))).round().astype(int)
    rows = []
    for qi in sorted(set(idx.tolist())):
        path, pid, _ = query[qi]
        img = read_image(path)
        key = "query:" + image_key(path)
        for kind in kinds:
            alt = [alter(img, kind, s, seed, key, donors, pid).image for s in severities]
            rows.append((f"{kind} #{qi}", [img] + alt))
    return rows, ["clean"] + [f"{s:g}" for s in severities]


def check_robustness_config(rc) -> None:
    """Raise ValueError naming the ``eval.robustness`` key whose value cannot be used."""
    check_kinds(rc.kinds)
    check_severities(rc.severities)
    if rc.num_examples < 0:
        raise InvalidValueError(
            f"eval.robustness.num_examples: expected >= 0, got {rc.num_examples}"
        )


def robustness_report(
    target: EvalTarget,
    out_dir: Optional[str] = None,
    clean_features: Optional[Dict[str, Any]] = None,
) -> Tuple[Dict[str, Any], List[str]]:
    """Run the ``eval.robustness`` sweep on the target data set's query/gallery, log one table,
    draw the curves (``robustness.png``) and the altered examples (``robustness_examples.png``)
    into ``out_dir``; return the robustness dict and the picture names."""
    cfg, model, ds, device = target.cfg, target.model, target.ds, target.device
    rc = cfg.eval.robustness
    check_robustness_config(rc)
    kinds = check_kinds(rc.kinds)
    severities = check_severities(rc.severities)
    donors = None
    if any(k.startswith("person_") for k in kinds):
        donors = DonorPool.from_dataset(ds)
        log.info(
            "robustness: person occluders from %d training images of other identities "
            "(%d images of test identities or test images left out)",
            len(donors),
            donors.num_excluded,
        )
    log.info(
        "robustness sweep: %d kinds x %d severities, %s altered, seed %d",
        len(kinds),
        len(severities),
        "query and gallery" if rc.alter_gallery else "query",
        rc.seed,
    )
    rob = robustness_sweep(
        model,
        ds.query,
        ds.gallery,
        target.transform,
        cfg.eval,
        device,
        kinds,
        severities,
        seed=rc.seed,
        donors=donors,
        alter_gallery=rc.alter_gallery,
        num_workers=cfg.sampler.num_workers,
        amp=target.use_amp,
        name=cfg.data.name,
        clean_features=clean_features,
    )
    log.info(
        "robustness (%s, %.0f s):\n%s", cfg.data.name, rob["seconds"], format_robustness_table(rob)
    )
    images: List[str] = []
    if out_dir:
        try:
            draw_robustness_curves(
                {cfg.model["name"]: rob}, os.path.join(out_dir, "robustness.png")
            )
            images.append("robustness.png")
            if rc.num_examples > 0:
                rows, header = example_rows(
                    ds.query, kinds, severities, rc.seed, donors, rc.num_examples
                )
                draw_example_strip(
                    rows,
                    header,
                    os.path.join(out_dir, "robustness_examples.png"),
                    tile=(128, max(32, 128 * cfg.input.width // cfg.input.height)),
                )
                images.append("robustness_examples.png")
        except Exception as exc:  # a picture must not lose the measured numbers
            log.warning("could not draw the robustness pictures: %s", exc)
    return rob, images
