"""Gallery loading: folder (extracted once, then cached), features file, index folder; the CLI."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest


@pytest.fixture
def small_folder(serve_setup, tmp_path):
    """Four crops of the session gallery in a folder of their own."""
    folder = tmp_path / "crops"
    folder.mkdir()
    src = serve_setup["gallery"]
    for name in sorted(f for f in os.listdir(src) if not os.path.islink(os.path.join(src, f)))[:4]:
        shutil.copy(os.path.join(src, name), folder / name)
    return str(folder)


class CountingFactory:
    """An extractor factory that counts how often a folder really had to be extracted."""

    def __init__(self, extractor):
        self.extractor = extractor
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.extractor


def test_folder_is_extracted_once_then_reused_until_it_changes(serve_setup, small_folder, tmp_path):
    from partreid.serve import load_gallery

    ckpt = serve_setup["checkpoint"]
    extractor = serve_setup["worker"].extractor
    factory = CountingFactory(extractor)
    cache = str(tmp_path / "cache")
    first = load_gallery(small_folder, ckpt, factory, cache)
    assert factory.calls == 1 and not first.cached and len(first) == 4
    assert sorted(first.rel_paths.tolist()) == sorted(os.listdir(small_folder))
    # the features are the model's features of these files (independent: extract directly)
    files = [os.path.join(small_folder, p) for p in first.rel_paths]
    np.testing.assert_allclose(first.features.features, extractor(files), rtol=1e-5, atol=1e-5)
    if os.name == "posix":  # the cached features are the owner's only, like a store's files
        assert os.stat(first.cache_path).st_mode & 0o777 == 0o700

    again = load_gallery(small_folder, ckpt, factory, cache)
    assert factory.calls == 1 and again.cached and again.cache_path == first.cache_path
    np.testing.assert_array_equal(again.features.features, first.features.features)

    # touching one image (new mtime) is a different folder: extracted again, new cache entry
    victim = os.path.join(small_folder, sorted(os.listdir(small_folder))[0])
    st = os.stat(victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = load_gallery(small_folder, ckpt, factory, cache)
    assert factory.calls == 2 and not third.cached and third.cache_path != first.cache_path
    # so is an added image
    shutil.copy(victim, os.path.join(small_folder, "0001_c1_extra.jpg"))
    fourth = load_gallery(small_folder, ckpt, factory, cache)
    assert factory.calls == 3 and len(fourth) == 5


def test_features_file_and_index_folder_galleries(serve_setup, small_folder, tmp_path):
    from partreid.index import GalleryIndex
    from partreid.serve import load_gallery

    extractor = serve_setup["worker"].extractor
    feats = extractor.extract(small_folder)
    npz = feats.save(str(tmp_path / "g.npz"))
    never = CountingFactory(None)
    g = load_gallery(npz, serve_setup["checkpoint"], never, None)
    assert g.source_kind == "features" and len(g) == 4 and never.calls == 0
    assert g.root == os.path.realpath(small_folder)  # images served from the extracted folder
    assert os.path.samefile(g.image_file(0), os.path.join(small_folder, g.rel_paths[0]))

    folder = GalleryIndex.build(feats).save(str(tmp_path / "g.index"))
    g2 = load_gallery(folder, serve_setup["checkpoint"], never, None)
    assert g2.source_kind == "index" and len(g2) == 4 and never.calls == 0
    assert g2.rel_paths.tolist() == g.rel_paths.tolist()


def test_bad_galleries_give_clear_errors(serve_setup, tmp_path):
    from partreid.features import Features, FeaturesFileError
    from partreid.serve import SearchWorker, ServedGallery, load_gallery
    from partreid.serve.gallery import GalleryPathError

    with pytest.raises(FileNotFoundError, match="gallery not found"):
        load_gallery(str(tmp_path / "nope"), serve_setup["checkpoint"], None, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        load_gallery(str(tmp_path / "empty"), serve_setup["checkpoint"], None, None)

    from partreid.index import GalleryIndex

    wrong = Features.build(np.zeros((3, 7), np.float32), ["/x/a.jpg", "/x/b.jpg", "/x/c.jpg"])
    served = ServedGallery(GalleryIndex.build(wrong), "wrong.npz", "features", None)
    with pytest.raises(FeaturesFileError, match="7-d features"):
        SearchWorker(serve_setup["worker"].extractor, served, serve_setup["worker"].limits)
    with pytest.raises(GalleryPathError, match="no image folder"):
        served.image_file(0)


def test_cli_serve_reports_bad_arguments(serve_setup, tmp_path, capsys):
    from partreid.cli import main

    assert main(["serve", serve_setup["checkpoint"], "--gallery", str(tmp_path / "nope")]) == 2
    assert "partreid serve: error: gallery not found" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "x.pth"), "--gallery", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["serve", serve_setup["checkpoint"], "--gallery", ".", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    args = ["serve", serve_setup["checkpoint"], "--gallery", ".", "--max-topk", "0"]
    assert main(args) == 2
    assert "max_topk" in capsys.readouterr().err


def test_missing_serve_extra_names_the_package_and_the_extra(serve_setup, monkeypatch):
    import sys

    from partreid.errors import MissingExtraError
    from partreid.serve import create_app

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if FastAPI were not installed
    with pytest.raises(MissingExtraError, match=r"\(fastapi is missing\).*partreid\[serve\]"):
        create_app(serve_setup["worker"])
