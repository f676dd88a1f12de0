"""One rule for "were these features made by this model?" (partreid.utils.model_match): the rule
itself, and each of its four callers (ingest, search --store, serve --store, search INDEX)
refusing another model's store or gallery with it."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from partreid.checkpoint import model_meta, save_checkpoint
from partreid.commands.ingest import ingest_command, model_description, open_store_for
from partreid.commands.search import load_queries
from partreid.commands.store_search import query_feature
from partreid.config import load_config
from partreid.features import Features
from partreid.index import open_gallery
from partreid.inference import Extractor, load_model
from partreid.models import build_model
from partreid.store import open_store
from partreid.utils.model_match import ModelDescription, ModelMismatchError, check_same_model

A = ModelDescription("bot", 512, "aaaa", "/runs/a/last.pth")


# ----------------------------------------------------------------------------- the rule
def test_the_rule():
    b = ModelDescription("bot", 512, "bbbb", "/runs/b/last.pth")
    with pytest.raises(ModelMismatchError) as err:
        check_same_model(A, "store /site", b, "the checkpoint", "use the store's model")
    assert str(err.value) == (
        "store /site holds features of model 'bot' (512-d features, fingerprint aaaa, from "
        "/runs/a/last.pth); the checkpoint gives features of model 'bot' (512-d features, "
        "fingerprint bbbb, from /runs/b/last.pth). The fingerprints differ (another model, or "
        "another training run of it), so the two cannot be compared: use the store's model"
    )
    wide = ModelDescription("bot", 2048, "", "")  # no fingerprint: the dimension still counts
    with pytest.raises(ModelMismatchError, match="The feature dimensions differ"):
        check_same_model(A, "a", wide, "b", "c")
    # the same fingerprint: an export of the checkpoint, elsewhere
    onnx = ModelDescription("bot", 512, "aaaa", "/cache/bot.onnx")
    assert check_same_model(A, "a", onnx, "b", "c") is None


def test_without_a_fingerprint_different_checkpoints_are_a_warning(caplog):
    old = ModelDescription("bot", 512, "", "/runs/b/last.pth")  # a features file of old
    with caplog.at_level(logging.WARNING, logger="partreid"):
        text = check_same_model(A, "the gallery index", old, "the query features", "c")
    assert "/runs/a/last.pth" in text and "/runs/b/last.pth" in text and "cannot tell" in text
    assert caplog.messages == [text]
    same = ModelDescription("", 0, "", "/runs/a/../a/last.pth")
    unknown = ModelDescription("", 512, "", "")
    assert check_same_model(A, "a", same, "b", "c") is None
    assert check_same_model(unknown, "a", A, "b", "c") is None


def test_descriptions_from_what_each_side_keeps():
    store_model = {"name": "bot", "feature_dim": 512, "fingerprint": "aaaa", "checkpoint": "/c"}
    assert ModelDescription.from_record(store_model, 256) == ModelDescription(
        "bot", 256, "aaaa", "/c"
    )
    meta = {"model": "bot", "checkpoint": "/c", "feature_dim": 512, "distance": "cosine"}
    assert ModelDescription.from_record(meta) == ModelDescription("bot", 512, "", "/c")
    assert ModelDescription.from_record(None, 10) == ModelDescription("", 10, "", "")
    assert str(ModelDescription("", 10)) == "a model of unknown name (10-d features)"
    assert ModelDescription("bot", 512, "aaaa", "/c").to_record() == store_model


# ----------------------------------------------------------------------------- the callers
@pytest.fixture(scope="module")
def two_models(ckpt, tiny_synthetic, tmp_path_factory):
    """A store and a gallery made with ``ckpt``; ``other``: the same architecture trained
    otherwise (another fingerprint, the same dimension)."""
    root = tmp_path_factory.mktemp("match")
    crops = root / "crops"
    crops.mkdir()
    gallery = os.path.join(tiny_synthetic, "bounding_box_test")
    for name in sorted(n for n in os.listdir(gallery) if not n.startswith("-"))[:4]:
        os.symlink(os.path.join(gallery, name), crops / name)
    store = str(root / "site")
    kw = dict(device="cpu", num_workers=0, progress=False)
    ingest_command(ckpt, str(crops), store, start_time="2026-12-03T14:00:00Z", **kw)
    gpath = str(root / "g.npz")
    Extractor(ckpt, **kw).extract(str(crops), out=gpath)
    cfg = load_config(
        None,
        ["model.name=bot", "model.backbone=resnet18", "model.pretrained=false"]
        + ["input.height=64", "input.width=32", "eval.distance=euclidean"],
    )
    torch.manual_seed(1)
    model = build_model("bot", 5, backbone="resnet18", pretrained=False)
    other = str(root / "other.pth")
    save_checkpoint(other, model.state_dict(), model_meta(cfg, model, 5))
    image = str(crops / sorted(os.listdir(crops))[0])
    fps = [load_model(p).info.fingerprint() for p in (ckpt, other)]
    assert fps[0] != fps[1]
    return dict(
        root=root,
        crops=str(crops),
        store=store,
        gallery=gpath,
        other=other,
        image=image,
        fingerprints=fps,
        ckpt=ckpt,
    )


def _refused(err, setup, remedy):
    """The one rule's refusal: both fingerprints named, why, and the caller's remedy."""
    text = str(err.value)
    assert all(fp in text for fp in setup["fingerprints"]), text
    assert "The fingerprints differ" in text and remedy in text, text


def test_ingest_refuses_a_store_of_another_model(two_models):
    kw = dict(device="cpu", num_workers=0, progress=False)
    with open_store_for(
        two_models["store"], model_description(Extractor(two_models["ckpt"], **kw))
    ):
        pass  # its own model
    with pytest.raises(ModelMismatchError) as err:
        open_store_for(two_models["store"], model_description(Extractor(two_models["other"], **kw)))
    _refused(err, two_models, "ingest with the store's model, or into a new store")


def test_store_search_refuses_a_checkpoint_of_another_model(two_models):
    with open_store(two_models["store"]) as st:
        feature, _ = query_feature(st, two_models["image"], None, None, device="cpu")
        assert feature.shape == (1, st.dim)
        with pytest.raises(ModelMismatchError) as err:
            query_feature(st, two_models["image"], None, two_models["other"], device="cpu")
    _refused(err, two_models, "give --checkpoint the model the store was built with")


def test_serve_refuses_a_store_of_another_model(two_models):
    pytest.importorskip("fastapi")
    from partreid.serve.app import build_worker, check_store_model

    cache = str(two_models["root"] / "cache")
    kw = dict(device="cpu", num_workers=0, runtime="torch")
    with open_store(two_models["store"]) as st:
        for ckpt, refused in ((two_models["ckpt"], False), (two_models["other"], True)):
            worker = build_worker(ckpt, None, cache, **kw)
            try:
                if not refused:
                    check_store_model(worker, st)
                    continue
                with pytest.raises(ModelMismatchError) as err:
                    check_store_model(worker, st)
            finally:
                worker.close()
    _refused(err, two_models, "serve the store with the model it was built with")


def test_search_refuses_queries_of_another_model(two_models, caplog):
    index = open_gallery(two_models["gallery"], backend="torch", device="cpu")
    kw = dict(device="cpu", num_workers=0)
    assert len(load_queries(two_models["image"], index, **kw)) == 1
    with pytest.raises(ModelMismatchError) as err:
        load_queries(two_models["image"], index, two_models["other"], **kw)
    _refused(err, two_models, "use the checkpoint the gallery was extracted with")
    other = Extractor(two_models["other"], progress=False, **kw)
    qpath = str(two_models["root"] / "q.npz")
    other.extract(two_models["crops"], out=qpath)
    with pytest.raises(ModelMismatchError) as err:
        load_queries(qpath, index)
    _refused(err, two_models, "extract the queries with the checkpoint the gallery was")
    # a features file of old (no fingerprint): accepted with a warning naming both checkpoints
    old = Features.load(qpath)
    del old.meta["fingerprint"]
    old.save(qpath)
    with caplog.at_level(logging.WARNING, logger="partreid"):
        assert len(load_queries(qpath, index)) == 4
    assert "cannot tell" in caplog.text and two_models["other"] in caplog.text
