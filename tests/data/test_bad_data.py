"""Bad data at scale: every case of the data-set docstring (partreid.data.datasets.base) is
handled as documented -- converted, skipped and counted, or refused naming the file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from partreid.data import build_dataset
from partreid.data.io import UnreadableImageError, read_image
from partreid.data.loader import build_test_loader


def _gray16(path, value):
    Image.fromarray(np.full((8, 4), value, dtype=np.uint16)).save(path)  # mode I;16 PNG


@pytest.fixture
def odd_images(tmp_path):
    """One file per kind of image a real folder holds, with the expected RGB pixel value."""
    d = tmp_path / "odd"
    d.mkdir()
    cases = {}
    Image.new("L", (4, 8), 77).save(d / "gray.png")
    cases["gray.png"] = (77, 77, 77)
    Image.new("1", (4, 8), 1).save(d / "bilevel.png")
    cases["bilevel.png"] = (255, 255, 255)
    Image.new("CMYK", (4, 8), (0, 0, 0, 0)).save(d / "cmyk.jpg")
    cases["cmyk.jpg"] = (255, 255, 255)
    Image.new("RGBA", (4, 8), (10, 200, 30, 0)).save(d / "rgba.png")
    cases["rgba.png"] = (10, 200, 30)
    pal = Image.new("P", (4, 8), 0)
    pal.putpalette([40, 50, 60] * 256)
    pal.save(d / "palette.png")
    cases["palette.png"] = (40, 50, 60)
    _gray16(d / "gray16.png", 257 * 100)
    cases["gray16.png"] = (100, 100, 100)
    _gray16(d / "gray16_max.png", 65535)
    cases["gray16_max.png"] = (255, 255, 255)
    Image.fromarray(np.full((8, 4), 0.5, dtype=np.float32), mode="F").save(d / "float.tiff")
    cases["float.tiff"] = (128, 128, 128)
    return d, cases


def test_every_image_mode_is_read_as_rgb_8bit(odd_images):
    d, cases = odd_images
    for name, rgb in cases.items():
        img = read_image(str(d / name))
        assert img.mode == "RGB" and img.size == (4, 8), name
        arr = np.asarray(img)
        assert arr.dtype == np.uint8
        assert np.abs(arr.astype(int) - np.array(rgb)).max() <= 1, (name, arr[0, 0], rgb)
    # a 16-bit colour PNG (48 bits per pixel) also comes out RGB 8-bit
    raw = np.zeros((8, 4, 3), dtype=">u2")
    raw[..., 0] = 65535
    import zlib

    def chunk(kind, data):
        return (
            len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
        )

    rows = b"".join(b"\0" + raw[y].tobytes() for y in range(8))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", (4).to_bytes(4, "big") + (8).to_bytes(4, "big") + bytes([16, 2, 0, 0, 0]))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    (d / "rgb48.png").write_bytes(png)
    arr = np.asarray(read_image(str(d / "rgb48.png")))
    assert arr.dtype == np.uint8 and arr.shape == (8, 4, 3)
    assert (arr[..., 0] == 255).all() and (arr[..., 1:] == 0).all()


def test_empty_and_corrupt_files_are_refused_naming_the_file(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not a JPEG at all")
    for path, why in ((empty, "empty (0 bytes)"), (junk, "cannot identify image")):
        with pytest.raises(UnreadableImageError) as info:
            read_image(str(path))
        assert str(path) in str(info.value) and why in str(info.value)
        assert info.value.path == str(path)
    with pytest.raises(UnreadableImageError, match="image not found"):
        read_image(str(tmp_path / "missing.jpg"))


@pytest.fixture
def bad_market(tiny_synthetic, tmp_path, odd_images):
    """The tiny synthetic set with a real data set's defects added to its train split."""
    root = tmp_path / "market"
    shutil.copytree(tiny_synthetic, root)
    train = root / "bounding_box_train"
    odd, _ = odd_images
    # grayscale / CMYK / 16-bit images under valid names (identity 0001, the first one)
    for i, src in enumerate(["gray.png", "cmyk.jpg", "gray16.png"]):
        img = Image.open(odd / src)
        (train / f"0001_c1_f09{i}.png").write_bytes((odd / src).read_bytes())
        assert img.mode in ("L", "CMYK", "I;16", "I")
    (train / "0001_c2_f0990.jpg").write_bytes(b"")  # zero-byte
    (train / "0002_c1_f0990.jpg").write_bytes(b"")
    shutil.copy(train / "0001_c1_f0000.jpg", train / "IMG_2024.jpg")  # names that do not parse
    shutil.copy(train / "0001_c1_f0000.jpg", train / "person-7.jpg")
    shutil.copy(train / "0001_c1_f0000.jpg", train / "0900_c1_f0000.jpg")  # a single image
    return root


def test_folder_defects_are_skipped_counted_or_converted(bad_market, caplog, monkeypatch):
    import logging

    # (a training run earlier in this process stops "partreid" propagating to caplog's handler)
    monkeypatch.setattr(logging.getLogger("partreid"), "propagate", True)
    caplog.set_level("WARNING", logger="partreid.data")
    ds = build_dataset("market1501", bad_market)
    notes = "\n".join(ds.notes)
    assert "skipped 2 empty (0-byte) image file(s)" in notes
    assert "0001_c2_f0990.jpg" in notes
    assert "skipped 2 image(s)" in notes and "IMG_2024.jpg" in notes
    assert "1 training identities have a single image (e.g. pid 900)" in notes
    assert all(n in caplog.text for n in ("0-byte", "IMG_2024.jpg", "single image"))
    paths = [p for p, _, _ in ds.train]
    assert not any(p.endswith(("0001_c2_f0990.jpg", "IMG_2024.jpg", "person-7.jpg")) for p in paths)
    odd = [p for p in paths if "_f09" in p]
    assert len(odd) == 3
    for p in odd:
        assert read_image(p).mode == "RGB"
    # verify=True decodes everything up front: this folder is then clean
    build_dataset("market1501", bad_market, verify=True)


def test_verify_lists_every_unreadable_image_at_once(bad_market):
    train = bad_market / "bounding_box_train"
    data = (train / "0003_c1_f0000.jpg").read_bytes()
    (train / "0003_c1_f0000.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (train / "0004_c2_f0001.jpg").write_bytes(b"GIF89a garbage")  # not decodable
    with pytest.raises(UnreadableImageError) as info:
        build_dataset("market1501", bad_market, verify=True)
    msg = str(info.value)
    assert msg.startswith("2 of ")
    assert "0003_c1_f0000.jpg" in msg and "0004_c2_f0001.jpg" in msg


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_loader_worker_names_the_image(bad_market, workers):
    ds = build_dataset("market1501", bad_market)
    bad = str(bad_market / "bounding_box_train" / "0005_c1_f0000.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff not really a jpeg")
    items = [it for it in ds.train if it[0] != bad][:6] + [(bad, 0, 0)]
    tf = lambda img: torch.from_numpy(np.array(img.resize((8, 16)))).permute(2, 0, 1)  # noqa: E731
    loader = build_test_loader(items, tf, batch_size=4, num_workers=workers)
    with pytest.raises(UnreadableImageError) as info:
        for _ in loader:
            pass
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"cannot read image {bad}")
    assert info.value.path == bad
    assert ("in data loader worker process" in msg) == (workers > 0)


def test_training_on_the_defective_folder_runs_through(bad_market, tiny_overrides, tmp_path):
    from partreid.config import load_config
    from partreid.engine import train

    cfg = load_config(
        None,
        tiny_overrides
        + [
            f"data.root={bad_market}",
            "schedule.epochs=1",
            "sampler.p=3",
            "sampler.num_workers=2",
            "train.max_iters_per_epoch=3",
            "model.backbone=resnet18",
            "eval.num_visualize=0",
            "eval.flip=false",
        ],
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = train(cfg)
    finally:
        torch.set_num_threads(threads)
    assert 0.0 <= metrics["mAP"] <= 1.0
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "empty (0-byte)" in log and "single image" in log
