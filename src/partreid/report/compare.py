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
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import InvalidValueError, NotFoundError
from .compare_intervals import share_intervals
from .compare_tables import (
    CLEAN_METRICS,
    ROB_METRICS,
    Report,
    RobustnessRuns,
    Run,
    add_clean_table,
    add_cross_tables,
    add_data_set_notes,
    add_mean_table,
    add_robustness_gap_notes,
    add_robustness_table,
    robustness_runs,
)
from .robustness import curve, draw_robustness_curves

CSV_COLUMNS = ("run", "model", "dataset", "test_set", "kind", "severity", "metric", "value")


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
        with open(f, encoding="utf-8") as fh:
            m = json.load(fh)
    except ValueError as exc:  # bad JSON, or not text at all (UnicodeDecodeError)
        raise InvalidValueError(f"{f} is not valid JSON: {exc}") from exc
    if not isinstance(m, dict) or "mAP" not in m:
        raise InvalidValueError(f"{f}: not a partreid metrics file (no top-level 'mAP')")
    return m


def _load_runs(run_args: Sequence[str]) -> List[Run]:
    """``(label, metrics)`` of each run argument; two runs may not share a label."""
    runs: List[Run] = []
    for arg in run_args:
        label, path = parse_run(arg)
        if any(label == lab for lab, _ in runs):
            raise InvalidValueError(f"two runs are labelled {label!r}; name them LABEL=RUN")
        runs.append((label, load_run(path)))
    return runs


def compare_runs(run_args: Sequence[str], out_dir: str) -> Dict[str, Any]:
    """Compare the runs named by ``run_args`` (folders, metrics.json files or LABEL=RUN);
    write the Markdown, CSV and figure into ``out_dir``; return them and the notes."""
    runs = _load_runs(run_args)
    os.makedirs(out_dir, exist_ok=True)
    rep = Report(md=["# partreid compare", ""])
    add_data_set_notes(rep, runs)
    add_clean_table(rep, runs)
    add_cross_tables(rep, runs)
    figure = _add_robustness(rep, runs, out_dir)
    _add_notes(rep)
    markdown = "\n".join(rep.md)
    md_path = _write_markdown(markdown, out_dir)
    return {
        "markdown": markdown,
        "markdown_path": md_path,
        "csv": _write_csv(rep.csv_rows, out_dir),
        "figure": figure,
        "notes": rep.notes,
        "runs": [lab for lab, _ in runs],
    }


def _add_robustness(rep: Report, runs: Sequence[Run], out_dir: str) -> Optional[str]:
    """The robustness tables, the intervals and the figure; the figure's path (None: no run has
    robustness results)."""
    rob = robustness_runs(rep, runs)
    if rob is None:
        return None
    add_robustness_gap_notes(rep, rob)
    add_robustness_table(rep, rob)
    shared = [k for k in rob.kinds if all(k in r.get("results", {}) for r in rob.results.values())]
    if shared:  # the mean over the kinds every run has, and what is kept of the clean mAP
        add_mean_table(rep, rob, shared)
        _add_intervals(rep, rob, shared)
    return draw_robustness_curves(
        rob.results,
        os.path.join(out_dir, "compare_robustness.png"),
        metrics=("mAP", "rank1"),
        kinds=rob.kinds,
    )


def _add_intervals(rep: Report, rob: RobustnessRuns, shared: Sequence[str]) -> None:
    altered = [s for s in rob.sevs if s > 0]
    md, tails, notes = share_intervals(rob.results, shared, altered)
    rep.md += md
    rep.notes += notes
    rep.csv_rows += [rob.csv_head(lab) + t for lab, t in tails]


def _add_notes(rep: Report) -> None:
    if rep.notes:
        rep.md += ["## Notes", ""] + [f"- {n}" for n in rep.notes] + [""]


def _write_markdown(markdown: str, out_dir: str) -> str:
    path = os.path.join(out_dir, "compare.md")
    with open(path, "w") as f:
        f.write(markdown)
    return path


def _write_csv(rows: Sequence[Sequence[Any]], out_dir: str) -> str:
    path = os.path.join(out_dir, "compare.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        w.writerows(rows)
    return path


__all__ = ["CLEAN_METRICS", "ROB_METRICS", "compare_runs", "load_run", "parse_run", "curve"]
