"""``partreid compare``: the runs' numbers side by side, and what is missing said plainly."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from partreid.cli import main
from partreid.errors import InvalidValueError
from partreid.report.compare import compare_runs, load_run, parse_run


def _rob(drop: float, kinds=("person_bottom", "keep_top"), sevs=(0.1, 0.3)) -> dict:
    """A robustness result whose mAP falls by ``drop`` per unit of severity."""
    clean = {"rank1": 0.6, "rank5": 0.8, "mAP": 0.5, "mINP": 0.3}
    return {
        "dataset": "cuhk03",
        "seed": 0,
        "alter_gallery": False,
        "kinds": list(kinds),
        "severities": list(sevs),
        "clean": clean,
        "results": {
            k: [
                {
                    "severity": s,
                    "rank1": 0.6 - drop * s,
                    "rank5": 0.8 - drop * s,
                    "mAP": 0.5 - drop * s,
                    "mINP": 0.3 - drop * s / 2,
                }
                for s in sevs
            ]
            for k in kinds
        },
    }


def _run(tmp_path, name, model, dataset="cuhk03", rob=None, cross=None) -> str:
    d = tmp_path / name
    d.mkdir()
    m = {
        "dataset": dataset,
        "model": model,
        "rank1": 0.6,
        "rank5": 0.8,
        "rank10": 0.9,
        "mAP": 0.5,
        "mINP": 0.3,
        "num_valid_queries": 200,
        "num_gallery": 773,
        "feature_dim": 1280,
    }
    if rob:
        m["robustness"] = rob
    if cross:
        m["cross_domain"] = cross
    (d / "metrics.json").write_text(json.dumps(m))
    return str(d)


def test_parse_run_labels():
    assert parse_run("cgpn=/x/runs/a") == ("cgpn", "/x/runs/a")
    assert parse_run("/x/runs/a") == ("a", "/x/runs/a")
    assert parse_run("/x/runs/a/metrics.json") == ("a", "/x/runs/a/metrics.json")


def test_table_csv_and_figure(tmp_path):
    a = _run(tmp_path, "a", "bot", rob=_rob(0.4), cross={"viper": {"rank1": 0.2, "mAP": 0.25}})
    b = _run(tmp_path, "b", "cgpn", rob=_rob(0.2))
    out = tmp_path / "cmp"
    r = compare_runs([f"BoT={a}", b], str(out))
    md = r["markdown"]
    assert r["runs"] == ["BoT", "b"]
    # robustness rows: rank-1 / mAP of each run at each point (0.6 - 0.4*0.3 = 0.48 etc.)
    assert "| person_bottom | 0.3 | 48.0 / 38.0 | 54.0 / 44.0 |" in md
    # mean over kinds and share of the clean mAP kept: (0.5 - 0.2*0.3)/0.5 = 0.88
    assert "44.0 (0.88)" in md and "38.0 (0.76)" in md
    assert "## Cross-data-set test: viper" in md and "cross-data-set test viper: missing in b" in md
    with open(r["csv"]) as f:
        rows = list(csv.DictReader(f))
    got = {
        (x["run"], x["kind"], x["severity"], x["metric"]): float(x["value"])
        for x in rows
        if x["test_set"] == "cuhk03"
    }
    assert got[("b", "keep_top", "0.1", "mAP")] == pytest.approx(0.48)
    assert got[("BoT", "clean", "0", "rank1")] == pytest.approx(0.6)
    assert (out / "compare.md").read_text() == md
    assert (out / "compare_robustness.png").stat().st_size > 0


def test_missing_robustness_and_other_data_set_are_reported(tmp_path):
    a = _run(tmp_path, "a", "bot", rob=_rob(0.4, kinds=("person_bottom",)))
    b = _run(tmp_path, "b", "mgn", dataset="market1501")
    c = _run(tmp_path, "c", "cgpn", rob=_rob(0.2, sevs=(0.1, 0.3, 0.5)))
    r = compare_runs([a, b, c], str(tmp_path / "cmp"))
    notes = " ".join(r["notes"])
    assert "different data sets" in notes and "market1501" in notes
    assert "no robustness results in: b" in notes
    assert "robustness of a lacks kinds ['keep_top']; severities [0.5]" in notes
    # the shared part is still compared; missing points are marked
    assert "| person_bottom | 0.5 | — |" in r["markdown"]


def test_cli_compare_and_clear_error(tmp_path, capsys):
    a = _run(tmp_path, "a", "bot")
    assert main(["compare", a, "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "## Clean test" in out and "| a | bot | cuhk03 | 60.0 | 80.0 | 50.0 | 30.0 |" in out
    assert main(["compare", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "partreid compare: error:" in err and "metrics.json" in err


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00binary", b"[1, 2]"])
def test_a_metrics_file_that_is_not_a_metrics_object_is_a_clear_error(tmp_path, content):
    (tmp_path / "metrics.json").write_bytes(content)
    with pytest.raises(InvalidValueError, match="metrics.json"):
        load_run(str(tmp_path))


def _rob_per_query(clean_ap, factor, digest="q1", kinds=("person_bottom", "keep_top")) -> dict:
    """A robustness result with per-query APs: each altered AP is ``factor[q] * clean_ap[q]``
    (None where the query has no valid match); the summary metrics follow from them."""
    clean = [None if v is None else float(v) for v in clean_ap]
    altered = [None if c is None else float(c * f) for c, f in zip(clean, factor)]

    def mean(xs):
        return float(np.mean([x for x in xs if x is not None]))

    rob = _rob(0.0, kinds=kinds, sevs=(0.1, 0.3))
    rob["clean"]["mAP"] = mean(clean)
    for k in kinds:
        for r in rob["results"][k]:
            r["mAP"] = mean(altered)
    rob["per_query_ap"] = {"clean": clean, **{k: [altered, altered] for k in kinds}}
    rob["query_digest"] = digest
    return rob


def test_share_kept_intervals_are_paired_over_queries(tmp_path):
    rng = np.random.default_rng(0)
    clean = list(rng.uniform(0.2, 1.0, 120)) + [None]  # the last query has no valid match
    weak = rng.uniform(0.3, 0.5, 121)  # keeps ~0.4 of each query's AP
    strong = weak + rng.uniform(0.2, 0.4, 121)  # keeps ~0.3 more of each query's AP
    a = _run(tmp_path, "a", "bot", rob=_rob_per_query(clean, weak))
    b = _run(tmp_path, "b", "cgpn", rob=_rob_per_query(clean, strong))
    r = compare_runs([f"BoT={a}", f"CGPN={b}"], str(tmp_path / "cmp"))
    md = r["markdown"]
    assert "bootstrap over the 120 queries with a valid match (2000 resamples, the same" in md
    assert "## Difference to BoT" in md
    rows = {}
    with open(r["csv"]) as f:
        for x in csv.DictReader(f):
            rows[(x["run"], x["kind"], x["severity"], x["metric"])] = float(x["value"])
    c = np.array(clean[:-1])
    share_a = float((c * weak[:-1]).mean() / c.mean())
    assert rows[("BoT", "mean", "0.3", "share_kept")] == pytest.approx(share_a)
    assert f"{share_a:.2f} [" in md  # agrees with the mean table's share
    lo, hi = (
        rows[("BoT", "mean", "0.3", "share_kept_ci_low")],
        rows[("BoT", "mean", "0.3", "share_kept_ci_high")],
    )
    assert lo < share_a < hi and hi - lo < 0.05
    # same queries, same clean APs: the clean difference is exactly 0; the share differs by
    # ~0.3, resolved (the paired interval excludes 0)
    diff = re.search(
        r"\| CGPN - BoT \| \+0\.0 \[\+0\.0, \+0\.0\] \| \+0\.(\d\d) \[(\S+), (\S+)\]", md
    )
    assert diff, md
    point, lo, hi = float("0." + diff.group(1)), float(diff.group(2)), float(diff.group(3))
    assert 0.2 < lo <= point <= hi < 0.4 and lo < hi


def test_intervals_say_what_they_cannot_pair(tmp_path):
    rng = np.random.default_rng(1)
    clean = list(rng.uniform(0.2, 1.0, 50))
    a = _run(tmp_path, "a", "bot", rob=_rob_per_query(clean, rng.uniform(0.3, 0.5, 50)))
    b = _run(tmp_path, "b", "mgn", rob=_rob_per_query(clean, rng.uniform(0.3, 0.5, 50), "q2"))
    c = _run(tmp_path, "c", "cgpn", rob=_rob(0.2))  # an older metrics.json: no per-query APs
    r = compare_runs([a, b, c], str(tmp_path / "cmp"))
    notes = " ".join(r["notes"])
    assert "asked different queries" in notes
    assert "no per-query APs in c's robustness results" in notes
    assert "## Share of the clean mAP kept, 95 % intervals" in r["markdown"]
    assert "## Difference to" not in r["markdown"]
