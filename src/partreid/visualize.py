"""``partreid visualize``: figures of a trained model (activation maps, ranked lists, ABP, RP)."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from .engine.evaluator import evaluate
from .engine.setup import load_data, test_transform
from .errors import InvalidValueError
from .inference import load_trained
from .report.abp import draw_abp_borders
from .report.activations import draw_activation_maps
from .report.image_batch import ImageBatch
from .report.ranked_list import draw_ranked_lists


def visualize(
    what: str,
    config: Optional[str],
    checkpoint: str,
    out: Optional[str] = None,
    num: int = 6,
    overrides: Sequence[str] = (),
) -> str:
    """``partreid visualize WHAT``: draw one figure of a trained model; return its path."""
    cfg, model, device = load_trained(checkpoint, config, overrides)
    ds = load_data(cfg)
    out = out or os.path.join(cfg.output_dir, f"{what}.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    step = max(1, len(ds.query) // max(num, 1))
    items = ds.query[::step][:num]
    tf = test_transform(cfg)
    if what in ("activations", "rp"):
        if not hasattr(model, "activation_maps"):
            raise InvalidValueError(f"model {cfg.model['name']!r} has no activation maps to draw")
        draw_activation_maps(model, ImageBatch.read(items, tf, device), out)
    elif what == "abp":
        draw_abp_borders(model, ImageBatch.read(items, tf, device), out)
    elif what == "ranked":
        _, distmat = evaluate(
            model, ds.query, ds.gallery, tf, cfg.eval, device, cfg.sampler.num_workers
        )
        draw_ranked_lists(distmat, ds.query, ds.gallery, out, num_queries=num)
    else:
        raise InvalidValueError(f"unknown figure {what!r}; valid: activations, ranked, abp, rp")
    print(f"wrote {os.path.abspath(out)}")
    return out
