"""``partreid compare``: several runs' ``metrics.json`` side by side, as the papers' tables.

Writes ``compare.md`` (clean test, each cross-data-set test, robustness per kind and severity,
and the mean over kinds), ``compare.csv`` (the same numbers in one long table: run, model,
data set, test set, kind, severity, metric, value) and ``compare_robustness.png`` (the
robustness curves of all runs). Runs that lack robustness results or were tested on different
data sets are still compared on what they share, and the notes say what is missing.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Dict, List, Sequence, Tuple

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
        raise FileNotFoundError(
            f"{f}: no metrics.json here; expected a run folder written by `partreid train` or "
            "`partreid eval --out DIR` (or the path of its metrics.json)"
        )
    try:
        with open(f) as fh:
            m = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{f} is not valid JSON: {exc}") from exc
    if not isinstance(m, dict) or "mAP" not in m:
        raise ValueError(f"{f}: not a partreid metrics file (no top-level 'mAP')")
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
            raise ValueError(f"two runs are labelled {label!r}; name them LABEL=RUN")
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


__all__ = ["compare_runs", "load_run", "parse_run", "curve"]
