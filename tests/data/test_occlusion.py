"""Occlusion / cut-off alterations: deterministic, size- and mode-preserving, the asked fraction,
occluder content from training images of other identities only."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from partreid.data.occlusion import (
    CUTS,
    KINDS,
    Altered,
    AlteredImageDataset,
    DonorPool,
    alter,
    check_kinds,
    image_key,
)

W, H = 64, 128
ODD = (13, 201, 77)  # a colour no donor/clutter pixel is likely to have exactly


def _donor_image(pid: int) -> Image.Image:
    """A donor 'person' whose every pixel encodes its identity (red = pid, green = 7)."""
    return Image.new("RGB", (40, 100), (pid, 7, 200))


@pytest.fixture
def donors():
    items = [(f"train/{pid:04d}_c1_{i}.jpg", pid) for pid in range(1, 30) for i in range(3)]
    return DonorPool(items, exclude_pids={5, 6, 7}, loader=lambda p: _donor_image(int(p[6:10])))


def _plain(mode: str = "RGB") -> Image.Image:
    img = Image.new("RGB", (W, H), ODD)
    return img if mode == "RGB" else img.convert(mode)


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_per_seed_and_image(kind, donors):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    a = np.asarray(alter(img, kind, 0.3, seed=1, key="q/1.jpg", donors=donors, pid=3).image)
    b = np.asarray(alter(img, kind, 0.3, seed=1, key="q/1.jpg", donors=donors, pid=3).image)
    assert np.array_equal(a, b)
    # another seed or another image changes the random draws of the random / person / clutter kinds
    if kind.endswith("random") or kind.startswith("clutter"):
        c = np.asarray(alter(img, kind, 0.3, seed=2, key="q/1.jpg", donors=donors, pid=3).image)
        d = np.asarray(alter(img, kind, 0.3, seed=1, key="q/2.jpg", donors=donors, pid=3).image)
        assert not np.array_equal(a, c) or not np.array_equal(a, d)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
@pytest.mark.parametrize("kind", KINDS)
def test_keeps_size_and_mode(kind, mode, donors):
    out = alter(_plain(mode), kind, 0.4, seed=0, key="k", donors=donors, pid=1).image
    assert out.size == (W, H) and out.mode == mode


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in CUTS])
@pytest.mark.parametrize("severity", [0.1, 0.2, 0.3, 0.4, 0.5])
def test_occluder_covers_the_asked_fraction(kind, severity, donors):
    img = _plain()
    out, mask, _ = alter(img, kind, severity, seed=3, key="q/x.jpg", donors=donors, pid=2)
    changed = np.any(np.asarray(out) != np.asarray(img), axis=2)
    # measured on the pixels: everything outside the occluder is untouched ...
    assert not np.any(changed & ~mask)
    # ... and the changed share of the crop is the severity (within rounding to whole pixels,
    # and a few clutter pixels that may happen to equal the original colour)
    assert abs(changed.mean() - severity) < 0.02, (changed.mean(), severity)
    assert abs(mask.mean() - severity) < 0.01


@pytest.mark.parametrize("kind", ["clutter_random", "keep_top"])
def test_alter_returns_the_image_its_mask_and_what_was_done(kind, donors):
    res = alter(_plain(), kind, 0.3, seed=3, key="q/x.jpg", donors=donors, pid=2)
    assert isinstance(res, Altered) and res == (res.image, res.mask, res.info)
    assert res.info["kind"] == kind and res.info["severity"] == 0.3
    if kind in CUTS:  # a cut moves every pixel: no mask, the kept rows instead
        assert res.mask is None and res.info["kept_rows"] == round(0.7 * H)
    else:
        x0, y0, x1, y1 = res.info["box"]
        assert res.mask.shape == (H, W) and res.mask.sum() == (x1 - x0) * (y1 - y0)
        assert res.mask[y0:y1, x0:x1].all()


@pytest.mark.parametrize("kind", CUTS)
@pytest.mark.parametrize("severity", [0.1, 0.3, 0.5])
def test_cut_keeps_the_asked_part_of_the_height(kind, severity):
    # each row has its own grey value 2*y, so the altered image shows which rows survived
    rows = (2 * np.arange(H, dtype=np.uint8))[:, None].repeat(W, 1)
    img = Image.fromarray(rows, "L")
    out = np.asarray(alter(img, kind, severity).image, dtype=float)
    shown = (out.max() - out.min()) / 2 + 1  # number of original rows spanned
    assert abs(shown / H - (1 - severity)) < 0.02
    if kind == "keep_top":
        assert out.min() == 0  # the top row is kept
    else:
        assert out.max() == 2 * (H - 1)  # the bottom row is kept


@pytest.mark.parametrize("kind", KINDS)
def test_severity_zero_is_identity(kind, donors):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8))
    out = alter(img, kind, 0.0, seed=0, key="k", donors=donors, pid=1).image
    assert np.array_equal(np.asarray(out), np.asarray(img))


def test_person_occluder_never_from_own_or_test_identity(donors):
    seen = set()
    for i in range(300):
        pid = 1 + i % 4  # query identities 1..4 (training pool has them: only the own is avoided)
        out, mask, info = alter(
            _plain(), "person_random", 0.3, seed=0, key=f"q/{i}.jpg", donors=donors, pid=pid
        )
        donor_pid = int(np.asarray(out)[mask][0, 0])  # red channel = donor identity
        assert donor_pid == info["donor_pid"]
        assert donor_pid != pid and donor_pid not in (5, 6, 7)
        seen.add(donor_pid)
    assert len(seen) > 10  # donors are spread over the pool


def test_donor_pool_from_dataset_excludes_test_identities_and_images():
    from partreid.data.datasets.base import ReIDDataset

    train = [(f"t/{pid}_{i}.jpg", pid) for pid in (10, 11, 12, 13) for i in range(2)]
    train = [(p, pid, 0) for p, pid in train] + [("q/12_0.jpg", 12, 0)]
    ds = ReIDDataset(
        "x",
        "r",
        train=train,
        query=[("q/12_0.jpg", 12, 0), ("q/20_0.jpg", 20, 1)],
        gallery=[("g/13_0.jpg", 13, 1)],
    )
    pool = DonorPool.from_dataset(ds, loader=lambda p: _donor_image(1))
    # train labels were relabelled 0..3; the pool works with the original identities
    assert {pid for _, pid in pool.items} == {10, 11}
    assert pool.num_excluded == 5


def test_dataset_yields_the_altered_image(tmp_path, donors):
    p = tmp_path / "query" / "0001_c1_0.jpg"
    p.parent.mkdir()
    _plain().save(p, format="PNG")
    ds = AlteredImageDataset([(str(p), 1, 0)], "person_bottom", 0.25, 4, donors, prefix="query:")
    expect = alter(
        Image.open(p).convert("RGB"),
        "person_bottom",
        0.25,
        4,
        "query:" + image_key(str(p)),
        donors,
        1,
    ).image
    img, pid, camid, index = ds[0]
    assert np.array_equal(np.asarray(img), np.asarray(expect)) and (pid, camid, index) == (1, 0, 0)
    assert image_key(str(p)) == "query/0001_c1_0.jpg"


def test_unknown_kind_and_bad_severity_are_named():
    with pytest.raises(ValueError, match="person_left"):
        check_kinds(["person_left"])
    with pytest.raises(ValueError, match="1.5"):
        alter(_plain(), "keep_top", 1.5)
    with pytest.raises(ValueError, match="DonorPool"):
        alter(_plain(), "person_top", 0.2)
