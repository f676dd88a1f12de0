"""Evaluate a trained model on its test split (and extra test sets) and write the run report."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

from ..data import build_dataset
from ..errors import InvalidValueError
from ..inference import load_trained
from ..report.activations import draw_activation_maps
from ..report.html import write_html
from ..report.image_batch import ImageBatch
from ..report.ranked_list import draw_ranked_lists
from ..utils.logs import setup_logging
from .evaluator import evaluate, format_metrics
from .robustness import check_robustness_config, robustness_report
from .setup import EvalTarget, load_data

log = logging.getLogger("partreid")


def evaluate_run(
    target: EvalTarget,
    out_dir: Optional[str] = None,
    draw: bool = True,
    features: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Evaluate ``target.ds`` and every ``cfg.data.test`` set; one metrics table per set.

    Returns the metrics of ``ds`` at the top level and the other sets under ``cross_domain``.
    With ``out_dir``, also draws ``ranked_list.png`` (and ``ranked_list_<set>.png``).
    ``features`` receives ``ds``'s query and gallery features (see :func:`evaluate`).
    """
    cfg, tf = target.cfg, target.transform
    sets = [(cfg.data.name, target.ds)]
    for spec in cfg.data.test:
        unknown = sorted(set(spec) - {"name", "root", "options", "label"})
        if unknown or "name" not in spec or "root" not in spec:
            raise InvalidValueError(
                f"data.test entries need 'name' and 'root' (optional: 'options', "
                f"'label'); got {spec}"
            )
        extra = build_dataset(spec["name"], spec["root"], **spec.get("options", {}))
        sets.append((spec.get("label", spec["name"]), extra))
    result: Dict[str, Any] = {}
    for i, (name, d) in enumerate(sets):
        m, distmat = evaluate(
            target.model,
            d.query,
            d.gallery,
            tf,
            cfg.eval,
            target.device,
            cfg.sampler.num_workers,
            target.use_amp,
            name=name,
            features=features if i == 0 else None,
        )
        log.info("%s", format_metrics(m, name))
        if out_dir and draw and cfg.eval.num_visualize > 0:
            fname = "ranked_list.png" if i == 0 else f"ranked_list_{name}.png"
            draw_ranked_lists(
                distmat,
                d.query,
                d.gallery,
                os.path.join(out_dir, fname),
                num_queries=cfg.eval.num_visualize,
                tile=(128, max(32, 128 * cfg.input.width // cfg.input.height)),
            )
            m["ranked_list"] = fname
        if i == 0:
            result.update({"dataset": name, **m})
        else:
            result.setdefault("cross_domain", {})[name] = m
    return result


def write_run_report(
    target: EvalTarget, out_dir: Optional[str] = None, notes: Optional[List[str]] = None
) -> Dict[str, Any]:
    """Evaluate, then write ``metrics.json``, ``ranked_list.png``, activation maps and
    ``report.html`` into the run folder (default ``cfg.output_dir``); return the metrics."""
    cfg, model, ds, device = target.cfg, target.model, target.ds, target.device
    out_dir = out_dir or cfg.output_dir
    os.makedirs(out_dir, exist_ok=True)
    if cfg.eval.robustness.enabled:  # a wrong kind or severity fails before the clean test
        check_robustness_config(cfg.eval.robustness)
    clean: Dict[str, Any] = {}  # the clean features, reused by the robustness sweep
    metrics = evaluate_run(target, out_dir=out_dir, features=clean)
    metrics["model"] = cfg.model["name"]
    images = [metrics[k] for k in ("ranked_list",) if k in metrics]
    images += [
        m["ranked_list"] for m in metrics.get("cross_domain", {}).values() if "ranked_list" in m
    ]
    if hasattr(model, "activation_maps") and cfg.eval.num_visualize > 0:
        items = ds.query[:: max(1, len(ds.query) // 4)][:4]
        try:
            batch = ImageBatch.read(items, target.transform, device)
            draw_activation_maps(model, batch, os.path.join(out_dir, "activations.png"))
            images.append("activations.png")
        except Exception as exc:  # a picture must not lose a finished run's metrics
            log.warning("could not draw activation maps: %s", exc)
    if cfg.eval.robustness.enabled:
        metrics["robustness"], rob_images = robustness_report(target, out_dir, clean)
        images += rob_images
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    page = write_html(
        out_dir,
        f"partreid: {cfg.model['name']} on {cfg.data.name}",
        metrics,
        images,
        notes,
        robustness=metrics.get("robustness"),
    )
    log.info("report: %s (metrics.json, pictures)", page)
    return metrics


def evaluate_checkpoint(
    checkpoint: str,
    config: Optional[str] = None,
    overrides: Sequence[str] = (),
    out: Optional[str] = None,
    only_test: bool = False,
) -> Dict[str, Any]:
    """``partreid eval``: load a checkpoint, evaluate it on its (or the config's) data, report.

    Without ``config`` the checkpoint's own training config is used; ``overrides`` change it
    (``data.root=...``, ``eval.rerank=true``, test-time ``model.*`` options).
    """
    cfg, model, device = load_trained(checkpoint, config, overrides)
    out = out or cfg.output_dir
    setup_logging(os.path.join(out, "log.txt"))
    if only_test:
        # evaluate only the extra test sets: the first becomes the main one
        if not cfg.data.test:
            raise InvalidValueError("--only-test needs at least one --test NAME=ROOT")
        first = cfg.data.test[0]
        cfg.data.name, cfg.data.root = first.get("label", first["name"]), first["root"]
        cfg.data.test = cfg.data.test[1:]
        ds = build_dataset(first["name"], first["root"], **first.get("options", {}))
    else:
        ds = load_data(cfg)
    use_amp = cfg.train.amp and device.type == "cuda"
    return write_run_report(EvalTarget(cfg, model, ds, device, use_amp), out_dir=out)
