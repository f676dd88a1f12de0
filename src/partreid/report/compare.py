"""``partreid compare``: several runs' ``metrics.json`` side by side, as the papers' tables.

Writes ``compare.md`` (clean test, each cross-data-set test, robustness per kind and severity,
the mean over kinds, and, from the runs' per-query APs, 95 % intervals of each run's share of
the clean mAP kept and of its difference to the first run, paired over queries),
``compare.csv`` (the same numbers in one long table: run, model, data set, test set, kind,
severity, metric, value) and ``compare_robustness.png`` (the robustness curves of all runs).
Runs that lack robustness results or were tested on different data sets are still compared on
what they share, and the notes say what is missing.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..errors import InvalidValueError, NotFoundError
from ..metrics.bootstrap import paired_bootstrap_ratio, percentile_interval
from .robustness import LABELS, curve, draw_robustness_curves, mean_curve

CLEAN_METRICS = ("rank1", "rank5", "mAP", "mINP")
ROB_METRICS = ("rank1", "mAP", "mINP")


def parse_run(arg: str) -> Tuple[str, str]:
    """``LABEL=RUN`` or ``RUN`` -> ``(label, path)``; the label defaults to the run folder's name."""
    label, sep, path = arg.partition("=")
    if not sep or not label or os.path.exists(arg):
        path = arg
        p = os.path.normpath(arg)
        label = os.path.basename(os.path.dirname(p) if p.endswith(".json") else p)
    return label, path


def load_run(path: str) -> Dict[str, Any]:
    """The metrics of a run: ``RUN/metrics.json`` (or the given .json file)."""
    f = os.path.join(path, "metrics.json") if os.path.isdir(path) else path
    if not os.path.isfile(f):
        raise NotFoundError(
            f"{f}: no metrics.json here; expected a run folder written by `partreid train` or "
            "`partreid eval --out DIR` (or the path of its metrics.json)"
        )
    try:
        with open(f) as fh:
            m = json.load(fh)
    except json.JSONDecodeError as exc:
        raise InvalidValueError(f"{f} is not valid JSON: {exc}") from exc
    if not isinstance(m, dict) or "mAP" not in m:
        raise InvalidValueError(f"{f}: not a partreid metrics file (no top-level 'mAP')")
    return m


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _point(rob: Dict[str, Any], kind: str, sev: float):
    for r in rob.get("results", {}).get(kind, []):
        if abs(float(r["severity"]) - sev) < 1e-9:
            return r
    return None


def compare_runs(run_args: Sequence[str], out_dir: str) -> Dict[str, Any]:
    """Compare the runs named by ``run_args`` (folders, metrics.json files or LABEL=RUN);
    write the Markdown, CSV and figure into ``out_dir``; return them and the notes."""
    runs: List[Tuple[str, Dict[str, Any]]] = []
    for arg in run_args:
        label, path = parse_run(arg)
        if any(label == lab for lab, _ in runs):
            raise InvalidValueError(f"two runs are labelled {label!r}; name them LABEL=RUN")
        runs.append((label, load_run(path)))
    os.makedirs(out_dir, exist_ok=True)
    notes: List[str] = []
    csv_rows: List[List[Any]] = []

    # ---- what the runs share
    datasets = {lab: m.get("dataset", "?") for lab, m in runs}
    if len(set(datasets.values())) > 1:
        notes.append(
            "the runs were tested on different data sets ("
            + ", ".join(f"{lab}: {d}" for lab, d in datasets.items())
            + "); their numbers are shown side by side but are not comparable"
        )
    else:
        notes.append(f"all runs tested on {next(iter(datasets.values()))}")
    sizes = {(m.get("num_query"), m.get("num_gallery")) for _, m in runs}
    if len(sizes) > 1 and len(set(datasets.values())) == 1:
        notes.append(f"the runs have different query/gallery sizes: {sorted(sizes, key=str)}")

    # ---- clean test
    md = ["# partreid compare", ""]
    md += ["## Clean test (%)", ""]
    rows = []
    for lab, m in runs:
        rows.append(
            [lab, m.get("model", "?"), m.get("dataset", "?")]
            + [_pct(m.get(k)) for k in CLEAN_METRICS]
            + [m.get("feature_dim", ""), m.get("num_valid_queries", ""), m.get("num_gallery", "")]
        )
        for k in CLEAN_METRICS:
            if k in m:
                csv_rows.append(
                    [lab, m.get("model"), m.get("dataset"), m.get("dataset"), "clean", 0, k, m[k]]
                )
    head = ["run", "model", "data set"] + [LABELS.get(k, k) for k in CLEAN_METRICS]
    md += [_table(head + ["dim", "queries", "gallery"], rows), ""]

    # ---- cross-data-set tests
    sets: List[str] = []
    for _, m in runs:
        sets += [s for s in m.get("cross_domain", {}) if s not in sets]
    for s in sets:
        md += [f"## Cross-data-set test: {s} (%)", ""]
        rows, missing = [], []
        for lab, m in runs:
            cm = m.get("cross_domain", {}).get(s)
            if cm is None:
                missing.append(lab)
                continue
            rows.append([lab] + [_pct(cm.get(k)) for k in CLEAN_METRICS])
            for k in CLEAN_METRICS:
                if k in cm:
                    csv_rows.append(
                        [lab, m.get("model"), m.get("dataset"), s, "clean", 0, k, cm[k]]
                    )
        md += [_table(["run"] + [LABELS.get(k, k) for k in CLEAN_METRICS], rows), ""]
        if missing:
            notes.append(f"cross-data-set test {s}: missing in {', '.join(missing)}")

    # ---- robustness
    robs = {lab: m["robustness"] for lab, m in runs if m.get("robustness")}
    lacking = [lab for lab, m in runs if not m.get("robustness")]
    if lacking:
        notes.append(
            f"no robustness results in: {', '.join(lacking)} (run `partreid eval --checkpoint "
            "CKPT --robustness --out DIR` to add them)"
        )
    figure = None
    if robs:
        kinds: List[str] = []
        sevs: List[float] = []
        for rob in robs.values():
            kinds += [k for k in rob.get("kinds", []) if k not in kinds]
            sevs += [float(s) for s in rob.get("severities", []) if float(s) not in sevs]
        sevs.sort()
        for lab, rob in robs.items():
            miss = [k for k in kinds if k not in rob.get("results", {})]
            miss_s = [s for s in sevs if s not in [float(x) for x in rob.get("severities", [])]]
            if miss or miss_s:
                notes.append(
                    f"robustness of {lab} lacks "
                    + "; ".join(
                        p
                        for p in (
                            f"kinds {miss}" if miss else "",
                            f"severities {miss_s}" if miss_s else "",
                        )
                        if p
                    )
                )
        settings = {(r.get("seed"), r.get("alter_gallery")) for r in robs.values()}
        if len(settings) > 1:
            notes.append(
                f"robustness runs used different (seed, alter_gallery): {sorted(settings, key=str)}"
            )
        labs = list(robs)
        md += ["## Robustness: rank-1 / mAP (%) with altered queries", ""]
        md += [
            "severity = fraction of the crop lost (occluded area, or height cut off for keep_*).",
            "",
        ]
        head = ["kind", "severity"] + labs
        rows = [
            ["clean", "0"]
            + [f"{_pct(r['clean']['rank1'])} / {_pct(r['clean']['mAP'])}" for r in robs.values()]
        ]
        for kind in kinds:
            for s in sevs:
                row = [kind, f"{s:g}"]
                for lab in labs:
                    p = _point(robs[lab], kind, s)
                    row.append("—" if p is None else f"{_pct(p['rank1'])} / {_pct(p['mAP'])}")
                    if p is not None:
                        m = dict(runs)[lab]
                        for k in ROB_METRICS:
                            csv_rows.append(
                                [
                                    lab,
                                    m.get("model"),
                                    m.get("dataset"),
                                    robs[lab].get("dataset"),
                                    kind,
                                    s,
                                    k,
                                    p[k],
                                ]
                            )
                rows.append(row)
        md += [_table(head, rows), ""]
        # mean over the kinds every run has, and what is kept of the clean mAP
        shared = [k for k in kinds if all(k in r.get("results", {}) for r in robs.values())]
        if shared:
            md += [
                f"## Mean over the {len(shared)} shared kinds: mAP (%) and share of the clean mAP kept",
                "",
            ]
            rows = []
            for lab, rob in robs.items():
                xs, ys = mean_curve(rob, shared, "mAP")
                r1x, r1y = mean_curve(rob, shared, "rank1")
                clean = rob["clean"]["mAP"]
                rows.append(
                    [lab]
                    + [
                        f"{_pct(ys[xs.index(s)])} ({ys[xs.index(s)] / clean:.2f})"
                        if s in xs
                        else "—"
                        for s in [0.0] + [s for s in sevs if s > 0]
                    ]
                )
                for x, y in zip(xs, ys):
                    csv_rows.append(
                        [
                            lab,
                            dict(runs)[lab].get("model"),
                            dict(runs)[lab].get("dataset"),
                            rob.get("dataset"),
                            "mean",
                            x,
                            "mAP",
                            y,
                        ]
                    )
                for x, y in zip(r1x, r1y):
                    csv_rows.append(
                        [
                            lab,
                            dict(runs)[lab].get("model"),
                            dict(runs)[lab].get("dataset"),
                            rob.get("dataset"),
                            "mean",
                            x,
                            "rank1",
                            y,
                        ]
                    )
            md += [_table(["run", "clean"] + [f"{s:g}" for s in sevs if s > 0], rows), ""]
            ci_md, ci_rows, ci_notes = _share_intervals(robs, shared, [s for s in sevs if s > 0])
            md += ci_md
            notes += ci_notes
            meta = {lab: dict(runs)[lab] for lab in robs}
            csv_rows += [
                [lab, meta[lab].get("model"), meta[lab].get("dataset"), robs[lab].get("dataset")]
                + row
                for lab, row in ci_rows
            ]
        figure = draw_robustness_curves(
            robs,
            os.path.join(out_dir, "compare_robustness.png"),
            metrics=("mAP", "rank1"),
            kinds=kinds,
        )
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    markdown = "\n".join(md)
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write(markdown)
    csv_path = os.path.join(out_dir, "compare.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "model", "dataset", "test_set", "kind", "severity", "metric", "value"])
        w.writerows(csv_rows)
    return {
        "markdown": markdown,
        "markdown_path": os.path.join(out_dir, "compare.md"),
        "csv": csv_path,
        "figure": figure,
        "notes": notes,
        "runs": [lab for lab, _ in runs],
    }


def _aps(values: Sequence[Any]) -> np.ndarray:
    """Per-query APs as stored in metrics.json (None: no valid match) -> float array with NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _mean_over_kinds(rob: Dict[str, Any], kinds: Sequence[str], sev: float) -> np.ndarray:
    """Each query's AP at ``sev``, averaged over ``kinds`` (NaN for queries without a match)."""
    i = [float(x) for x in rob["severities"]].index(sev)
    return np.mean([_aps(rob["per_query_ap"][k][i]) for k in kinds], axis=0)


def _share_intervals(
    robs: Dict[str, Dict[str, Any]],
    kinds: Sequence[str],
    sevs: Sequence[float],
    n_resamples: int = 2000,
    level: float = 0.95,
) -> Tuple[List[str], List[Tuple[str, List[Any]]], List[str]]:
    """95 % intervals (paired bootstrap over queries) of each run's clean mAP and share of the
    clean mAP kept (mean over ``kinds``), and of each run's difference to the first run.

    Returns ``(markdown lines, (label, csv row tail) pairs, notes)``.
    """
    notes: List[str] = []
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
    sevs = [
        s for s in sevs if all(s in [float(x) for x in r["severities"]] for r in usable.values())
    ]
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

    def draws(group: List[str]) -> Dict[str, np.ndarray]:
        """(n_resamples, 1 + len(sevs)) per run: clean mAP, then the share kept per severity."""
        # per run, 1 + len(sevs) ratio rows: clean / 1, then altered / clean at each severity
        num = [x for lab in group for x in [clean[lab], *altered[lab]]]
        den = [x for lab in group for x in [np.ones_like(clean[lab])] + [clean[lab]] * len(sevs)]
        b = paired_bootstrap_ratio(np.stack(num), np.stack(den), n_resamples, seed=0)
        per_run = b.reshape(n_resamples, len(group), 1 + len(sevs))
        return {lab: per_run[:, i] for i, lab in enumerate(group)}

    samples: Dict[str, np.ndarray] = {}
    for group in [labs] if paired else [[lab] for lab in labs]:
        samples.update(draws(group))
    points = {
        lab: [float(np.nanmean(clean[lab]))]
        + [float(np.nanmean(a) / np.nanmean(clean[lab])) for a in altered[lab]]
        for lab in labs
    }
    n_valid = min(int(np.sum(~np.isnan(c))) for c in clean.values())
    head = ["run", "clean mAP (%)"] + [f"{s:g}" for s in sevs]
    pct = int(round(100 * level))
    md = [
        f"## Share of the clean mAP kept, {pct} % intervals",
        "",
        f"Mean over the {len(kinds)} shared kinds; percentile bootstrap over the "
        f"{n_valid} queries with a valid match ({n_resamples} resamples"
        + (", the same resamples for every run" if paired else "")
        + ").",
        "",
    ]
    rows, csv_rows = [], []
    for lab in labs:
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
    md += [_table(head, rows), ""]
    if paired and len(labs) > 1:
        ref = labs[0]
        md += [
            f"## Difference to {ref}, {pct} % intervals (paired over queries)",
            "",
            "An interval that excludes 0 is a difference this test set can resolve.",
            "",
        ]
        rows = []
        for lab in labs[1:]:
            cells = []
            for j in range(1 + len(sevs)):
                d = samples[lab][:, j] - samples[ref][:, j]
                lo, hi = percentile_interval(d, level)
                point = points[lab][j] - points[ref][j]
                if j == 0:
                    cells.append(f"{100 * point:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
                else:
                    cells.append(f"{point:+.2f} [{lo:+.2f}, {hi:+.2f}]")
            rows.append([f"{lab} - {ref}"] + cells)
        md += [_table(head, rows), ""]
    return md, csv_rows, notes


__all__ = ["compare_runs", "load_run", "parse_run", "curve"]
