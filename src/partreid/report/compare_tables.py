"""The tables of ``partreid compare``, one function each: the clean test, each cross-data-set
test, robustness per kind and severity, and the mean over the kinds every run has.

Each adds its Markdown lines, CSV rows and notes (what the runs lack or do not share) to a
:class:`Report`, in the order ``compare.md`` and ``compare.csv`` show them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .robustness import LABELS, mean_curve

CLEAN_METRICS = ("rank1", "rank5", "mAP", "mINP")
ROB_METRICS = ("rank1", "mAP", "mINP")

#: ``(label, metrics.json)`` of one run.
Run = Tuple[str, Dict[str, Any]]


@dataclass
class Report:
    """What ``partreid compare`` writes, built section by section."""

    md: List[str] = field(default_factory=list)
    csv_rows: List[List[Any]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def pct(v: Optional[float]) -> str:
    """A fraction as a percentage with one decimal, ``—`` for a missing value."""
    return "—" if v is None else f"{100 * v:.1f}"


def md_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def csv_head(label: str, metrics: Dict[str, Any], test_set: Any) -> List[Any]:
    """The first CSV columns of a row: run, model, data set, test set."""
    return [label, metrics.get("model"), metrics.get("dataset"), test_set]


def add_data_set_notes(rep: Report, runs: Sequence[Run]) -> None:
    """Say whether the runs were tested on the same data set and query/gallery sizes."""
    datasets = {lab: m.get("dataset", "?") for lab, m in runs}
    if len(set(datasets.values())) > 1:
        rep.notes.append(
            "the runs were tested on different data sets ("
            + ", ".join(f"{lab}: {d}" for lab, d in datasets.items())
            + "); their numbers are shown side by side but are not comparable"
        )
    else:
        rep.notes.append(f"all runs tested on {next(iter(datasets.values()))}")
    sizes = {(m.get("num_query"), m.get("num_gallery")) for _, m in runs}
    if len(sizes) > 1 and len(set(datasets.values())) == 1:
        rep.notes.append(f"the runs have different query/gallery sizes: {sorted(sizes, key=str)}")


def add_clean_table(rep: Report, runs: Sequence[Run]) -> None:
    """The clean test of each run: rank-1/5, mAP, mINP, feature size, queries, gallery."""
    rep.md += ["## Clean test (%)", ""]
    rows = []
    for lab, m in runs:
        rows.append(
            [lab, m.get("model", "?"), m.get("dataset", "?")]
            + [pct(m.get(k)) for k in CLEAN_METRICS]
            + [m.get("feature_dim", ""), m.get("num_valid_queries", ""), m.get("num_gallery", "")]
        )
        rep.csv_rows += [
            csv_head(lab, m, m.get("dataset")) + ["clean", 0, k, m[k]]
            for k in CLEAN_METRICS
            if k in m
        ]
    head = ["run", "model", "data set"] + [LABELS.get(k, k) for k in CLEAN_METRICS]
    rep.md += [md_table(head + ["dim", "queries", "gallery"], rows), ""]


def add_cross_tables(rep: Report, runs: Sequence[Run]) -> None:
    """One table per cross-data-set test any run has, in the order the runs name them."""
    sets: List[str] = []
    for _, m in runs:
        sets += [s for s in m.get("cross_domain", {}) if s not in sets]
    for s in sets:
        _add_cross_table(rep, runs, s)


def _add_cross_table(rep: Report, runs: Sequence[Run], test_set: str) -> None:
    rep.md += [f"## Cross-data-set test: {test_set} (%)", ""]
    rows, missing = [], []
    for lab, m in runs:
        cm = m.get("cross_domain", {}).get(test_set)
        if cm is None:
            missing.append(lab)
            continue
        rows.append([lab] + [pct(cm.get(k)) for k in CLEAN_METRICS])
        rep.csv_rows += [
            csv_head(lab, m, test_set) + ["clean", 0, k, cm[k]] for k in CLEAN_METRICS if k in cm
        ]
    rep.md += [md_table(["run"] + [LABELS.get(k, k) for k in CLEAN_METRICS], rows), ""]
    if missing:
        rep.notes.append(f"cross-data-set test {test_set}: missing in {', '.join(missing)}")


@dataclass
class RobustnessRuns:
    """The robustness results of the runs that have them, by label, with every kind any of them
    has (in first-seen order) and every severity (sorted): the axes of the robustness tables."""

    results: Dict[str, Dict[str, Any]]
    metrics: Dict[str, Dict[str, Any]]  # each run's metrics.json, by label
    kinds: List[str]
    sevs: List[float]

    def csv_head(self, label: str) -> List[Any]:
        """The first CSV columns of a robustness row of run ``label``."""
        return csv_head(label, self.metrics[label], self.results[label].get("dataset"))


def robustness_runs(rep: Report, runs: Sequence[Run]) -> Optional[RobustnessRuns]:
    """The runs' robustness results (None: no run has any); a note names the runs without any."""
    lacking = [lab for lab, m in runs if not m.get("robustness")]
    if lacking:
        rep.notes.append(
            f"no robustness results in: {', '.join(lacking)} (run `partreid eval --checkpoint "
            "CKPT --robustness --out DIR` to add them)"
        )
    robs = {lab: m["robustness"] for lab, m in runs if m.get("robustness")}
    if not robs:
        return None
    kinds: List[str] = []
    sevs: List[float] = []
    for rob in robs.values():
        kinds += [k for k in rob.get("kinds", []) if k not in kinds]
        sevs += [float(s) for s in rob.get("severities", []) if float(s) not in sevs]
    sevs.sort()
    return RobustnessRuns(robs, dict(runs), kinds, sevs)


def add_robustness_gap_notes(rep: Report, rob: RobustnessRuns) -> None:
    """Notes on kinds or severities a run lacks, and on differing robustness settings."""
    for lab, r in rob.results.items():
        miss = [k for k in rob.kinds if k not in r.get("results", {})]
        miss_s = [s for s in rob.sevs if s not in [float(x) for x in r.get("severities", [])]]
        if miss or miss_s:
            parts = (f"kinds {miss}" if miss else "", f"severities {miss_s}" if miss_s else "")
            rep.notes.append(f"robustness of {lab} lacks " + "; ".join(p for p in parts if p))
    settings = {(r.get("seed"), r.get("alter_gallery")) for r in rob.results.values()}
    if len(settings) > 1:
        rep.notes.append(
            f"robustness runs used different (seed, alter_gallery): {sorted(settings, key=str)}"
        )


def _point(rob: Dict[str, Any], kind: str, sev: float) -> Optional[Dict[str, Any]]:
    for r in rob.get("results", {}).get(kind, []):
        if abs(float(r["severity"]) - sev) < 1e-9:
            return r
    return None


def add_robustness_table(rep: Report, rob: RobustnessRuns) -> None:
    """Rank-1 / mAP of every run at every kind and severity (``—`` where a run lacks it)."""
    labs = list(rob.results)
    rep.md += ["## Robustness: rank-1 / mAP (%) with altered queries", ""]
    rep.md += [
        "severity = fraction of the crop lost (occluded area, or height cut off for keep_*).",
        "",
    ]
    rows = [
        ["clean", "0"]
        + [f"{pct(r['clean']['rank1'])} / {pct(r['clean']['mAP'])}" for r in rob.results.values()]
    ]
    for kind in rob.kinds:
        for s in rob.sevs:
            row = [kind, f"{s:g}"]
            for lab in labs:
                p = _point(rob.results[lab], kind, s)
                row.append("—" if p is None else f"{pct(p['rank1'])} / {pct(p['mAP'])}")
                if p is not None:
                    rep.csv_rows += [rob.csv_head(lab) + [kind, s, k, p[k]] for k in ROB_METRICS]
            rows.append(row)
    rep.md += [md_table(["kind", "severity"] + labs, rows), ""]


def add_mean_table(rep: Report, rob: RobustnessRuns, shared: Sequence[str]) -> None:
    """mAP averaged over the ``shared`` kinds per severity, with the share of the clean mAP kept."""
    rep.md += [
        f"## Mean over the {len(shared)} shared kinds: mAP (%) and share of the clean mAP kept",
        "",
    ]
    altered = [s for s in rob.sevs if s > 0]
    rows = []
    for lab, r in rob.results.items():
        xs, ys = mean_curve(r, shared, "mAP")
        r1x, r1y = mean_curve(r, shared, "rank1")
        clean = r["clean"]["mAP"]
        rows.append(
            [lab]
            + [
                f"{pct(ys[xs.index(s)])} ({ys[xs.index(s)] / clean:.2f})" if s in xs else "—"
                for s in [0.0] + altered
            ]
        )
        head = rob.csv_head(lab)
        rep.csv_rows += [head + ["mean", x, "mAP", y] for x, y in zip(xs, ys)]
        rep.csv_rows += [head + ["mean", x, "rank1", y] for x, y in zip(r1x, r1y)]
    rep.md += [md_table(["run", "clean"] + [f"{s:g}" for s in altered], rows), ""]
