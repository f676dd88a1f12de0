"""The interval tables of ``partreid compare``: from the runs' stored per-query APs, a
percentile bootstrap over queries of each run's clean mAP and share of the clean mAP kept (mean
over the shared kinds), and, when all runs were asked the same queries, of each run's difference
to the first run with the same resamples for every run (paired)."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..metrics.bootstrap import paired_bootstrap_ratio, percentile_interval
from .compare_tables import md_table

#: ``(label, CSV row tail: kind, severity, metric, value)``
CsvTail = Tuple[str, List[Any]]


def _aps(values: Sequence[Any]) -> np.ndarray:
    """Per-query APs as stored in metrics.json (None: no valid match) -> float array with NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _severities(rob: Dict[str, Any]) -> List[float]:
    return [float(x) for x in rob["severities"]]


def _mean_over_kinds(rob: Dict[str, Any], kinds: Sequence[str], sev: float) -> np.ndarray:
    """Each query's AP at ``sev``, averaged over ``kinds`` (NaN for queries without a match)."""
    i = _severities(rob).index(sev)
    return np.mean([_aps(rob["per_query_ap"][k][i]) for k in kinds], axis=0)


def _runs_with_per_query_aps(
    robs: Dict[str, Dict[str, Any]], kinds: Sequence[str], notes: List[str]
) -> Dict[str, Dict[str, Any]]:
    """The runs that stored per-query APs of clean and every kind; a note names the others."""
    usable = {}
    for lab, rob in robs.items():
        pq = rob.get("per_query_ap")
        if not pq or any(k not in pq for k in kinds) or "clean" not in pq:
            notes.append(
                f"no per-query APs in {lab}'s robustness results (written by an older partreid): "
                "no confidence intervals for it"
            )
            continue
        usable[lab] = rob
    return usable


def _bootstrap(
    group: Sequence[str],
    clean: Dict[str, np.ndarray],
    altered: Dict[str, List[np.ndarray]],
    n_resamples: int,
) -> Dict[str, np.ndarray]:
    """(n_resamples, 1 + #severities) per run of ``group``, all from the same resamples of the
    queries: the clean mAP, then the share kept at each severity (a ratio of means)."""
    n_sevs = len(altered[group[0]])
    # per run, 1 + n_sevs ratio rows: clean / 1, then altered / clean at each severity
    num = [x for lab in group for x in [clean[lab], *altered[lab]]]
    den = [x for lab in group for x in [np.ones_like(clean[lab])] + [clean[lab]] * n_sevs]
    b = paired_bootstrap_ratio(np.stack(num), np.stack(den), n_resamples, seed=0)
    per_run = b.reshape(n_resamples, len(group), 1 + n_sevs)
    return {lab: per_run[:, i] for i, lab in enumerate(group)}


def _interval_rows(
    samples: Dict[str, np.ndarray],
    points: Dict[str, List[float]],
    sevs: Sequence[float],
    level: float,
) -> Tuple[List[List[str]], List[CsvTail]]:
    """Table rows ``point [low, high]`` per run (clean mAP in %, then shares) and CSV tails."""
    rows, csv_rows = [], []
    for lab in points:
        cells = []
        for j, x in enumerate([0.0] + list(sevs)):
            lo, hi = percentile_interval(samples[lab][:, j], level)
            scale = 100.0 if j == 0 else 1.0
            fmt = "{:.1f}" if j == 0 else "{:.2f}"
            cells.append(
                f"{fmt.format(scale * points[lab][j])} "
                f"[{fmt.format(scale * lo)}, {fmt.format(scale * hi)}]"
            )
            metric = "mAP" if j == 0 else "share_kept"
            kind = "clean" if j == 0 else "mean"
            csv_rows += [
                (lab, [kind, x, metric, points[lab][j]]),
                (lab, [kind, x, f"{metric}_ci_low", lo]),
                (lab, [kind, x, f"{metric}_ci_high", hi]),
            ]
        rows.append([lab] + cells)
    return rows, csv_rows


def _difference_table(
    samples: Dict[str, np.ndarray],
    points: Dict[str, List[float]],
    head: Sequence[str],
    level: float,
) -> List[str]:
    """Markdown of each run's paired difference to the first run, with intervals."""
    labs = list(points)
    ref = labs[0]
    md = [
        f"## Difference to {ref}, {int(round(100 * level))} % intervals (paired over queries)",
        "",
        "An interval that excludes 0 is a difference this test set can resolve.",
        "",
    ]
    rows = []
    for lab in labs[1:]:
        cells = []
        for j in range(len(points[lab])):
            d = samples[lab][:, j] - samples[ref][:, j]
            lo, hi = percentile_interval(d, level)
            point = points[lab][j] - points[ref][j]
            if j == 0:
                cells.append(f"{100 * point:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
            else:
                cells.append(f"{point:+.2f} [{lo:+.2f}, {hi:+.2f}]")
        rows.append([f"{lab} - {ref}"] + cells)
    return md + [md_table(head, rows), ""]


def share_intervals(
    robs: Dict[str, Dict[str, Any]],
    kinds: Sequence[str],
    sevs: Sequence[float],
    n_resamples: int = 2000,
    level: float = 0.95,
) -> Tuple[List[str], List[CsvTail], List[str]]:
    """95 % intervals (paired bootstrap over queries) of each run's clean mAP and share of the
    clean mAP kept (mean over ``kinds``), and of each run's difference to the first run.

    Returns ``(markdown lines, (label, csv row tail) pairs, notes)``.
    """
    notes: List[str] = []
    usable = _runs_with_per_query_aps(robs, kinds, notes)
    sevs = [s for s in sevs if all(s in _severities(r) for r in usable.values())]
    if not usable or not sevs:
        return [], [], notes
    digests = {r.get("query_digest") for r in usable.values()}
    paired = len(digests) == 1 and None not in digests  # the same queries, in the same order
    if not paired:
        notes.append(
            "the runs were asked different queries: intervals are per run, and differences "
            "between runs are not shown"
        )
    labs = list(usable)
    # per run: (clean, [mean over kinds at each severity]) per-query rows; share = ratio of means
    clean = {lab: _aps(r["per_query_ap"]["clean"]) for lab, r in usable.items()}
    altered = {lab: [_mean_over_kinds(r, kinds, s) for s in sevs] for lab, r in usable.items()}
    samples: Dict[str, np.ndarray] = {}
    for group in [labs] if paired else [[lab] for lab in labs]:
        samples.update(_bootstrap(group, clean, altered, n_resamples))
    points = {
        lab: [float(np.nanmean(clean[lab]))]
        + [float(np.nanmean(a) / np.nanmean(clean[lab])) for a in altered[lab]]
        for lab in labs
    }
    n_valid = min(int(np.sum(~np.isnan(c))) for c in clean.values())
    head = ["run", "clean mAP (%)"] + [f"{s:g}" for s in sevs]
    md = [
        f"## Share of the clean mAP kept, {int(round(100 * level))} % intervals",
        "",
        f"Mean over the {len(kinds)} shared kinds; percentile bootstrap over the "
        f"{n_valid} queries with a valid match ({n_resamples} resamples"
        + (", the same resamples for every run" if paired else "")
        + ").",
        "",
    ]
    rows, csv_rows = _interval_rows(samples, points, sevs, level)
    md += [md_table(head, rows), ""]
    if paired and len(labs) > 1:
        md += _difference_table(samples, points, head, level)
    return md, csv_rows, notes
