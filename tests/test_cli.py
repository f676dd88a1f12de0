"""The command line as a user meets it: clear messages for bad inputs, each option reaching the
call it stands for, the parser's choices equal to what the libraries accept, and the quick
commands (--help, list, store stats) answered without importing torch."""

import argparse
import functools
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import partreid.cli
from partreid.cli import RUNS, _eval_overrides, _resolve, build_parser, main

BOT = str(Path(__file__).resolve().parents[1] / "configs" / "bot" / "market1501.yaml")


def _run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_unknown_config_key(capsys, tiny_overrides):
    code, err = _run(capsys, "train", "-c", BOT, "optim.learning_rate=1")
    assert code == 2 and "optim.learning_rate" in err and "valid keys of optim" in err


def test_missing_data_folder(capsys, tiny_overrides, tmp_path):
    missing = tmp_path / "nowhere"
    code, err = _run(
        capsys, "train", "-c", BOT, f"data.root={missing}", f"output_dir={tmp_path / 'run'}"
    )
    assert code == 2 and str(missing) in err


def test_corrupt_jpeg_is_named(capsys, tiny_synthetic, tiny_overrides, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_synthetic, root)
    bad = sorted((root / "bounding_box_train").glob("*.jpg"))[3]
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    over = [o for o in tiny_overrides if not o.startswith("data.root")]
    code, err = _run(
        capsys, "train", "-c", BOT, *over, f"data.root={root}", "data.verify_images=true"
    )
    assert code == 2 and "1 of" in err and bad.name in err


def test_checkpoint_of_another_model(capsys, tiny_overrides, tmp_path):
    from partreid.checkpoint import model_meta, save_checkpoint
    from partreid.config import load_config
    from partreid.models import build_model

    ckpt = tmp_path / "other.pth"
    m = build_model("bot", 8, backbone="resnet34")
    save_checkpoint(
        str(ckpt),
        m.state_dict(),
        model_meta(load_config(None, ["model.name=bot", "model.backbone=resnet34"]), m, 8),
    )
    code, err = _run(capsys, "eval", "-c", BOT, "--checkpoint", str(ckpt), *tiny_overrides)
    assert code == 2 and "holds model 'bot' (backbone 'resnet34')" in err and "resnet18" in err


def test_missing_checkpoint_and_weights_file(capsys, tiny_overrides, tmp_path):
    code, err = _run(
        capsys, "eval", "-c", BOT, "--checkpoint", str(tmp_path / "none.pth"), *tiny_overrides
    )
    assert code == 2 and "checkpoint not found" in err
    code, err = _run(
        capsys, "train", "-c", BOT, *tiny_overrides, f"model.pretrained={tmp_path / 'w.pth'}"
    )
    assert code == 2 and "pretrained weights file not found" in err


def test_eval_test_sets_become_data_test_entries():
    args = build_parser().parse_args(
        ["eval", "--checkpoint", "c.pth", "--test", "viper=/d/viper", "--test", "market1501=/m"]
    )
    (over,) = _eval_overrides(args)
    assert over.startswith("data.test=")
    assert json.loads(over[len("data.test=") :]) == [
        {
            "name": "manifest",
            "root": "/d/viper",
            "label": "viper",
            "options": {"test_fraction": 0.5, "query_cams": [1], "gallery_cams": [2]},
        },
        {"name": "market1501", "root": "/m"},
    ]
    bad = build_parser().parse_args(["eval", "--checkpoint", "c.pth", "--test", "viper"])
    with pytest.raises(SystemExit, match="--test expects NAME=ROOT"):
        _eval_overrides(bad)


# --------------------------------------------------------------------------------------------
# The runners: every "module:function" resolves, every parsed option reaches its call
# --------------------------------------------------------------------------------------------

# options a cmd_* function turns into something else before the call (checked by behaviour below)
HANDLED_BEFORE_THE_CALL = {
    "train": {"config", "overrides", "resume"},  # load_config(config, overrides), train(resume)
    "eval": {"rerank", "distance", "qe", "test", "robustness"},  # _eval_overrides
}


def _commands(parser, path=()):
    """``(command path, its parser)`` of every command that runs (``store stats``, ...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, path + (name,))
            return
    yield " ".join(path), parser


def _dests(parser):
    return {a.dest for a in parser._actions if not isinstance(a, argparse._HelpAction)}


def test_every_target_resolves():
    targets = re.findall(
        r"[\"'](partreid(?:\.\w+)*:\w+)[\"']", Path(partreid.cli.__file__).read_text()
    )
    assert len(targets) >= len(RUNS) + 5
    for target in targets:
        _resolve(target)  # raises if the module or the name went
    for name, run in RUNS.items():
        assert callable(_resolve(run.target)), name


def test_every_option_reaches_its_call():
    commands = dict(_commands(build_parser()))
    assert {key.split(" --")[0] for key in RUNS} <= set(commands)
    for path, parser in commands.items():
        dests = _dests(parser)
        used = set(HANDLED_BEFORE_THE_CALL.get(path, ()))
        for key, run in RUNS.items():
            if key.split(" --")[0] != path:
                continue
            func = _resolve(run.target)
            params = inspect.signature(func).parameters
            plan = run.plan(func, dests)
            required = {
                n
                for n, p in params.items()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            }
            assert required <= set(plan), f"{key}: {sorted(required - set(plan))} not given"
            assert set(run.rename) <= set(params), f"{key}: renames a parameter that went"
            assert set(run.rename.values()) | set(run.extra) <= dests, key
            used |= {dest for dest, _ in plan.values()}
        if path not in ("train", "list"):
            assert used == dests, f"{path}: options no call takes: {sorted(dests - used)}"
        runner = parser.get_default("func")  # its Run, or its cmd_* function
        assert runner is RUNS.get(path) or runner is getattr(partreid.cli, f"cmd_{path}", None)


def _record(monkeypatch, target, result=None):
    """Replace ``target`` by a recorder of the arguments it is given, by name (same signature)."""
    module, _, name = target.partition(":")
    real = _resolve(target)
    calls = []

    sig = inspect.signature(real)
    (rest,) = [p.name for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD] or [None]

    @functools.wraps(real)
    def fake(*args, **kwargs):
        call = dict(sig.bind(*args, **kwargs).arguments)
        call.update(call.pop(rest, {}))  # **kwargs by their own names
        calls.append(call)
        return result

    monkeypatch.setattr(importlib.import_module(module), name, fake)
    return calls


# (target, command line, what the fake returns, exit status, the call the target gets): the
# arguments are written out by hand, as the former cmd_* functions passed them
CALLS = [
    (
        "partreid.commands.extract:extract_command",
        "extract m.pth crops --out f.npz --no-flip --workers 3",
        None,
        0,
        {
            **dict(model="m.pth", source="crops", out="f.npz", boxes=None, device="auto"),
            **dict(batch_size=64, num_workers=3, flip=False, amp=True, progress=True),
        },
    ),
    (
        "partreid.commands.search:index_command",
        "index g.npz --out ix --kind hnsw --hnsw-m 16",
        None,
        0,
        {
            **dict(feats_path="g.npz", out="ix", kind="hnsw", backend="auto", metric=None),
            **dict(normalize=None, device="auto", pca=None, nlist=None, nprobe=None, m=None),
            **dict(nbits=None, hnsw_m=16, ef_construction=None, ef_search=None, refine=None),
        },
    ),
    (
        "partreid.commands.search:search_command",
        "search ix q.npz --nprobe 8",
        None,
        0,
        {
            **dict(index_path="ix", query="q.npz", topk=10, checkpoint=None, rerank=False),
            **dict(out=None, skip_same_camera=False, backend="auto", device="auto"),
            **dict(batch_size=64, nprobe=8, ef_search=None, refine=None),
        },
    ),
    (
        "partreid.commands.store_search:search_store_command",
        "search --store site q.jpg --cameras 3,4 --by crop",
        None,
        0,
        {
            **dict(store_uri="site", query="q.jpg", topk=10, by="crop", cameras="3,4"),
            **dict(after=None, before=None, tracklet=None, checkpoint=None, out=None),
            **dict(device="auto"),
        },
    ),
    (
        "partreid.commands.store:stats_command",
        "store stats site --json",
        {"crops": 1},
        0,
        dict(store_uri="site", as_json=True, cameras=None, after=None, before=None),
    ),
    (
        "partreid.commands.store:stats_command",
        "store stats site --cameras 3-7 --after 2026-12-03T14:00",
        {"crops": 1},
        0,
        dict(store_uri="site", as_json=False, cameras="3-7", after="2026-12-03T14:00", before=None),
    ),
    (
        "partreid.commands.store:delete_command",
        "store delete site --camera 3",
        7,  # crops deleted, not an exit status
        0,
        dict(store_uri="site", before=None, camera=3, track=None, identity=None),
    ),
    (
        "partreid.commands.store:delete_command",
        "store delete site --identity 7",
        12,
        0,
        dict(store_uri="site", before=None, camera=None, track=None, identity="7"),
    ),
    (
        "partreid.commands.link:tracklets_command",
        "store tracklets site --identity 7 --out r.csv",
        [],
        0,
        dict(store_uri="site", out="r.csv", identity=7, cameras=None, after=None, before=None),
    ),
    (
        "partreid.commands.link:link_command",
        "link site --cameras 3-7 --transitions t.csv --threshold 0.6 --no-center --json",
        None,
        0,
        {
            **dict(store_uri="site", cameras="3-7", after=None, before=None),
            **dict(transitions="t.csv", threshold=0.6, k=None, as_json=True, center=False),
        },
    ),
    (
        "partreid.commands.store_search:search_store_command",
        "search --store site --tracklet 1:3 --by identity --topk 3",
        None,
        0,
        {
            **dict(store_uri="site", query=None, topk=3, by="identity", cameras=None),
            **dict(after=None, before=None, tracklet="1:3", checkpoint=None, out=None),
            **dict(device="auto"),
        },
    ),
    (
        "partreid.commands.ingest:ingest_command",
        "ingest m.pth cam1.mkv --store site --boxes b.txt --camera 1 --link --transitions t.csv"
        " --runtime onnx",
        None,
        0,
        {
            **dict(checkpoint="m.pth", source="cam1.mkv", store_uri="site", boxes="b.txt"),
            **dict(camera=1, start_time=None, fps=None, device="auto", batch_size=64),
            **dict(num_workers=2, progress=True, link=True, transitions="t.csv", runtime="onnx"),
        },
    ),
    (
        "partreid.commands.export:export_command",
        "export c.pth --format openvino --out m.xml --int8 --calibration cal --max-map-drop 0.5",
        3,  # the exit status
        3,
        {
            **dict(checkpoint="c.pth", fmt="openvino", out="m.xml", check_images=None),
            **dict(flip=True, tolerance=1e-4, int8=True, calibration="cal", max_map_drop=0.5),
        },
    ),
    (
        "partreid.engine.eval_run:evaluate_checkpoint",
        "eval --checkpoint c.pth --rerank --qe alpha --only-test a.b=1",
        {},
        0,
        {
            **dict(checkpoint="c.pth", config=None, out=None, only_test=True),
            **dict(overrides=["a.b=1", "eval.rerank=true", "eval.query_expansion=alpha"]),
        },
    ),
]


@pytest.mark.parametrize(
    "target, argv, result, status, expected", CALLS, ids=[c[1].split(" ")[0] for c in CALLS]
)
def test_options_become_the_calls_arguments(monkeypatch, target, argv, result, status, expected):
    calls = _record(monkeypatch, target, result)
    assert main(argv.split()) == status
    assert calls == [expected]


def test_search_and_compare(monkeypatch, capsys):
    plain = _record(monkeypatch, "partreid.commands.search:search_command")
    store = _record(monkeypatch, "partreid.commands.store_search:search_store_command")
    assert main(["search", "--store", "site", "ix", "q.jpg"]) == 2
    assert main(["search", "ix"]) == 2
    assert "search needs INDEX QUERY" in capsys.readouterr().err
    assert plain == store == []
    calls = _record(monkeypatch, "partreid.report.compare:compare_runs", {"markdown": "| a |"})
    assert main(["compare", "A=r1", "r2"]) == 0
    assert calls == [dict(run_args=["A=r1", "r2"], out_dir="compare")]
    assert capsys.readouterr().out == "| a |\n"


def test_train_call(monkeypatch, capsys):
    configs = _record(monkeypatch, "partreid.config:load_config", "CFG")
    interrupted = _resolve("partreid.engine.checkpointing:TrainingInterrupted")
    runs = []

    def train(cfg, resume=None):
        runs.append((cfg, resume))
        raise interrupted("stopped at step 5; run again with --resume", 15)

    monkeypatch.setattr(importlib.import_module("partreid.engine"), "train", train)
    assert main(["train", "-c", "x.yaml", "k=v", "--resume"]) == 143
    assert main(["train", "-c", "x.yaml", "k=v", "--resume", "last.pth"]) == 143
    assert configs == [dict(path="x.yaml", overrides=["k=v"])] * 2
    assert runs == [("CFG", "auto"), ("CFG", "last.pth")]
    assert "partreid train: stopped at step 5" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Choices and names: the parser's literals equal what the libraries accept
# --------------------------------------------------------------------------------------------


def _choices(path, dest):
    parser = dict(_commands(build_parser()))[path]
    (action,) = [a for a in parser._actions if a.dest == dest]
    return tuple(action.choices)


def test_choices_equal_the_libraries():
    from partreid.deploy.runtime import RUNTIMES
    from partreid.index import BACKENDS, KINDS
    from partreid.metrics.distance import METRICS

    assert _choices("index", "kind") == KINDS
    assert _choices("index", "backend") == _choices("search", "backend") == BACKENDS
    assert _choices("index", "metric") == _choices("eval", "distance") == METRICS
    assert _choices("serve", "runtime") == RUNTIMES


def test_export_formats_equal_what_export_accepts():
    """commands.export keeps its formats in code; its error for another one lists them."""
    from partreid.commands.export import export_command
    from partreid.errors import InvalidValueError

    with pytest.raises(InvalidValueError, match="unknown export format") as err:
        export_command("c.pth", "tflite", "m.out")
    valid = re.search(r"valid: (.+)$", str(err.value)).group(1).split(", ")
    assert _choices("export", "format") == tuple(valid)


def test_list_prints_the_live_registries(capsys):
    """``partreid list`` reads the torch-free catalogue; what it prints is the registries'."""
    from partreid.data import list_datasets
    from partreid.models import list_models, model_options

    expected = ["models:"]
    for m in list_models():
        expected.append(f"  {m}: " + ", ".join(f"{k}={v!r}" for k, v in model_options(m).items()))
    expected.append("data sets: " + ", ".join(list_datasets()))
    assert main(["list"]) == 0
    assert capsys.readouterr().out.splitlines() == expected


# --------------------------------------------------------------------------------------------
# The quick commands import no torch
# --------------------------------------------------------------------------------------------

QUICK = """
import runpy, sys
for argv in (["--help"], ["list"], ["store", "stats", sys.argv[1]]):
    sys.argv = ["partreid", *argv]
    try:
        runpy.run_module("partreid", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        assert exc.code in (0, None), (argv, exc.code)
heavy = ("torch", "torchvision", "faiss", "PIL", "scipy", "onnx", "onnxruntime", "fastapi")
print(sorted({m.split(".")[0] for m in sys.modules} & set(heavy)))
"""


def test_quick_commands_import_no_torch(tmp_path):
    from partreid.store import CropBatch, open_store

    site = str(tmp_path / "site")
    with open_store(site, create=True, info={"dim": 4, "model": {"name": "bot"}}) as st:
        st.add(CropBatch(ids=[1, 2], features=np.eye(2, 4), camera=[3, 4], timestamp=[0.0, 1.0]))
    env = dict(os.environ, PYTHONPATH=str(Path(partreid.cli.__file__).parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", QUICK, site], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "[]", lines[-1]  # no heavy module was imported
    assert "usage: partreid" in out.stdout and "bot:" in out.stdout
    assert any(line.startswith("camera 3") for line in lines)
