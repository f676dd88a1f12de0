"""The site identity commands' glue: link, store tracklets (CSV / JSON), store delete
--identity, store stats with identities, search --store --by identity."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from partreid.commands.link import link_command, tracklets_command
from partreid.commands.store import delete_command, stats_command
from partreid.commands.store_search import search_store_command
from partreid.errors import InvalidValueError
from partreid.store import IdentityNotFoundError, open_store


@pytest.fixture
def store(tmp_path, site_crops):
    uri = str(tmp_path / "site")
    crops = site_crops(seed=11, people=5)
    with open_store(uri, create=True, info={"dim": 16, "model": {"name": "test"}}) as st:
        st.add(crops)
    return uri, crops


def test_link_then_list_then_forget(store, tmp_path, capsys):
    uri, crops = store
    moves = tmp_path / "moves.csv"
    moves.write_text(
        "from_camera,to_camera,min_s,max_s\n"
        + "".join(f"{a},{b},0,60\n" for a in (1, 2, 3) for b in (1, 2, 3))  # a == b: one camera
    )
    report = link_command(uri, threshold=0.5, transitions=str(moves))
    printed = capsys.readouterr().out
    assert "people    5 (5 new)" in printed and "threshold given" in printed
    assert report.identities == 5
    again = link_command(uri, threshold=0.5, as_json=True)
    assert json.loads(capsys.readouterr().out)["changed"] == 0 == again.changed

    out = tmp_path / "all.csv"
    rows = tracklets_command(uri, str(out))
    with open(out, newline="") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == ["camera", "track_id", "start", "end", "n", "identity", "tracklet"]
    assert len(got) == len(rows) and {r["identity"] for r in got} == {"1", "2", "3", "4", "5"}
    assert all(r["start"].endswith("Z") and int(r["n"]) == 3 for r in got)

    one = tmp_path / "one.json"
    mine = tracklets_command(uri, str(one), identity=2)
    doc = json.loads(one.read_text())
    assert (
        doc["identity"] == 2 and doc["tracklets"] == mine and {r["identity"] for r in mine} == {2}
    )

    st = stats_command(uri)
    text = capsys.readouterr().out
    assert "people    5 site identities; 0 of" in text
    assert st.extra["identities"]["identities"] == 5

    n = delete_command(uri, identity=2)
    assert n == 3 * len(mine)
    assert stats_command(uri, as_json=True).extra["identities"]["identities"] == 4
    capsys.readouterr()
    with pytest.raises(IdentityNotFoundError):
        delete_command(uri, identity=2)
    with pytest.raises(InvalidValueError, match="alone"):
        delete_command(uri, identity=3, camera=1)
    with pytest.raises(InvalidValueError, match=".csv or .json"):
        tracklets_command(uri, str(tmp_path / "x.txt"))


def test_search_by_identity(store, tmp_path, capsys):
    uri, _ = store
    link_command(uri, threshold=0.5)
    with open_store(uri) as st:
        table = st.tracklets()
    key = table.keys[0]
    capsys.readouterr()
    recs = search_store_command(uri, None, topk=2, by="identity", tracklet=key)
    printed = capsys.readouterr().out
    assert recs[0]["identity"] == int(table.identity[0]) and recs[0]["distance"] < 0.05
    assert key in [s["tracklet"] for s in recs[0]["route"]]
    assert f"identity {recs[0]['identity']}: cameras" in printed
    out = tmp_path / "who.json"
    search_store_command(uri, None, topk=2, by="identity", tracklet=key, out=str(out))
    assert json.loads(out.read_text())["results"] == recs
    np.testing.assert_array_equal(
        [s["camera"] for s in recs[0]["route"]],
        [int(c) for c, i in zip(table.camera, table.identity) if i == recs[0]["identity"]],
    )
