"""Evaluate a trained model on its test split (and extra test sets) and write the run report."""
from __future__ import annotations

import html
import json
import logging
import os
from typing import Any, Dict, List, Optional

import torch

log = logging.getLogger("partreid")

METRIC_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")


def evaluate_run(cfg, model, ds, device, use_amp: bool = False, out_dir: Optional[str] = None,
                 draw: bool = True) -> Dict[str, Any]:
    """Evaluate on ``ds`` and on every ``cfg.data.test`` set; one metrics table per set.

    Returns the metrics of ``ds`` at the top level and the other sets under ``cross_domain``.
    With ``out_dir``, also draws ``ranked_list.png`` (and ``ranked_list_<set>.png``).
    """
    from ..data import build_dataset
    from ..engine.evaluator import evaluate, format_metrics
    from ..engine.trainer import test_transform
    from .ranked_list import draw_ranked_lists

    tf = test_transform(cfg)
    sets = [(cfg.data.name, ds)]
    for spec in cfg.data.test:
        unknown = sorted(set(spec) - {"name", "root", "options", "label"})
        if unknown or "name" not in spec or "root" not in spec:
            raise ValueError(f"data.test entries need 'name' and 'root' (optional: 'options', "
                             f"'label'); got {spec}")
        extra = build_dataset(spec["name"], spec["root"], **spec.get("options", {}))
        sets.append((spec.get("label", spec["name"]), extra))
    result: Dict[str, Any] = {}
    for i, (name, d) in enumerate(sets):
        m, distmat = evaluate(model, d.query, d.gallery, tf, cfg.eval, device,
                              cfg.sampler.num_workers, use_amp, name=name)
        log.info("%s", format_metrics(m, name))
        if out_dir and draw and cfg.eval.num_visualize > 0:
            fname = "ranked_list.png" if i == 0 else f"ranked_list_{name}.png"
            draw_ranked_lists(distmat, d.query, d.gallery, os.path.join(out_dir, fname),
                              num_queries=cfg.eval.num_visualize,
                              tile=(128, max(32, 128 * cfg.input.width // cfg.input.height)))
            m["ranked_list"] = fname
        if i == 0:
            result.update({"dataset": name, **m})
        else:
            result.setdefault("cross_domain", {})[name] = m
    return result


def write_html(out_dir: str, title: str, metrics: Dict[str, Any], images: List[str],
               notes: Optional[List[str]] = None) -> str:
    """A small self-contained page: the metrics table(s) and the pictures of the run."""
    rows = [(metrics.get("dataset", "test"), metrics)] + list(metrics.get("cross_domain", {}).items())
    table = "".join(
        f"<tr><td>{html.escape(str(n))}</td>" + "".join(
            f"<td>{100 * m[k]:.1f}</td>" for k in METRIC_KEYS) +
        f"<td>{m.get('num_valid_queries', '')}</td><td>{m.get('num_gallery', '')}</td></tr>"
        for n, m in rows)
    pics = "".join(f'<figure><img src="{html.escape(p)}"><figcaption>{html.escape(p)}'
                   "</figcaption></figure>" for p in images)
    extra = "".join(f"<p>{html.escape(n)}</p>" for n in (notes or []))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}img{{max-width:100%}}</style>
</head><body><h1>{html.escape(title)}</h1>{extra}
<table><tr><th>test set</th><th>rank-1 %</th><th>rank-5 %</th><th>rank-10 %</th><th>mAP %</th>
<th>mINP %</th><th>queries</th><th>gallery</th></tr>{table}</table>{pics}</body></html>"""
    path = os.path.join(out_dir, "report.html")
    with open(path, "w") as f:
        f.write(page)
    return path


def write_run_report(cfg, model, ds, device, use_amp: bool = False,
                     out_dir: Optional[str] = None, notes: Optional[List[str]] = None
                     ) -> Dict[str, Any]:
    """Evaluate, then write ``metrics.json``, ``ranked_list.png``, activation maps and
    ``report.html`` into the run folder; return the metrics."""
    out_dir = out_dir or cfg.output_dir
    os.makedirs(out_dir, exist_ok=True)
    metrics = evaluate_run(cfg, model, ds, device, use_amp, out_dir=out_dir)
    metrics["model"] = cfg.model["name"]
    images = [metrics[k] for k in ("ranked_list",) if k in metrics]
    images += [m["ranked_list"] for m in metrics.get("cross_domain", {}).values() if "ranked_list" in m]
    if hasattr(model, "activation_maps") and cfg.eval.num_visualize > 0:
        from .activations import draw_activation_maps
        from ..engine.trainer import test_transform

        items = ds.query[:: max(1, len(ds.query) // 4)][:4]
        try:
            draw_activation_maps(model, items, test_transform(cfg), device,
                                 os.path.join(out_dir, "activations.png"))
            images.append("activations.png")
        except Exception as exc:  # a picture must not lose a finished run's metrics
            log.warning("could not draw activation maps: %s", exc)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    page = write_html(out_dir, f"partreid: {cfg.model['name']} on {cfg.data.name}", metrics,
                      images, notes)
    log.info("report: %s (metrics.json, pictures)", page)
    return metrics
