"""``partreid visualize``: figures of a trained model (activation maps, ranked lists, ABP, RP)."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from .errors import InvalidValueError


def load_trained(config: Optional[str], checkpoint: str, overrides: Sequence[str] = ()):
    """``(cfg, model in eval mode, data set, device)`` from a checkpoint (and optionally a
    config; by default the one saved in the checkpoint)."""
    from .checkpoint import load_checkpoint
    from .config import load_config
    from .engine.setup import load_data
    from .inference import model_from_checkpoint
    from .utils.device import resolve_device

    ckpt = load_checkpoint(checkpoint)
    cfg = load_config(config, overrides, base=None if config else ckpt["meta"].get("config"))
    device = resolve_device(cfg.train.device)
    model = model_from_checkpoint(ckpt, checkpoint, device, overrides=dict(cfg.model))
    return cfg, model, load_data(cfg), device


def visualize(
    what: str,
    config: Optional[str],
    checkpoint: str,
    out: Optional[str] = None,
    num: int = 6,
    overrides: Sequence[str] = (),
) -> str:
    from .engine.setup import test_transform

    cfg, model, ds, device = load_trained(config, checkpoint, overrides)
    out = out or os.path.join(cfg.output_dir, f"{what}.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    step = max(1, len(ds.query) // max(num, 1))
    items = ds.query[::step][:num]
    tf = test_transform(cfg)
    if what in ("activations", "rp"):
        if not hasattr(model, "activation_maps"):
            raise InvalidValueError(f"model {cfg.model['name']!r} has no activation maps to draw")
        from .report.activations import draw_activation_maps

        draw_activation_maps(model, items, tf, device, out, cfg.input.mean, cfg.input.std)
    elif what == "abp":
        from .report.abp import draw_abp_borders

        draw_abp_borders(model, items, tf, device, out, cfg.input.mean, cfg.input.std)
    elif what == "ranked":
        from .engine.evaluator import evaluate
        from .report.ranked_list import draw_ranked_lists

        _, distmat = evaluate(
            model, ds.query, ds.gallery, tf, cfg.eval, device, cfg.sampler.num_workers
        )
        draw_ranked_lists(distmat, ds.query, ds.gallery, out, num_queries=num)
    else:
        raise InvalidValueError(f"unknown figure {what!r}; valid: activations, ranked, abp, rp")
    print(f"wrote {os.path.abspath(out)}")
    return out
