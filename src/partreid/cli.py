"""``partreid`` command line: parses the arguments and calls the function doing the work.

Commands: ``train``, ``eval``, ``compare``, ``demo``, ``visualize``, ``inspect``, ``extract``,
``export``, ``serve``, ``index``, ``search``, ``ingest``, ``link``, ``store
stats|delete|tracklets`` and ``list``.

Nothing but the standard library is imported here: each command imports what it needs when it
runs, so ``partreid --help``, ``partreid list`` and ``partreid store stats`` answer without
loading torch. A command is one ``_add_<command>`` function that registers its arguments and
its runner: an entry of :data:`RUNS` (a :class:`Run`: the ``"module:function"`` it calls, given
the parsed arguments by name), or, where a command does a little more than one call (train,
eval, compare, search, list), a ``cmd_<command>`` function below. ``tests/test_layers.py``
checks every ``"module:name"`` target here against the layer order, and ``tests/test_cli.py``
that each one resolves and that every parsed argument reaches its call.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Collection, Dict, List, Mapping, Optional, Tuple

from .errors import InvalidValueError, PartreidError

# --------------------------------------------------------------------------------------------
# What each command calls
# --------------------------------------------------------------------------------------------


def _resolve(target: str) -> Any:
    """The object a ``"package.module:name"`` target names, importing its module now."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Run:
    """A command that is one call: ``target`` (``"module:function"``) gets the parsed arguments.

    Each parameter ``p`` of the function takes the argument ``rename.get(p, p)``, or the negation
    of ``no_<that>`` (``--no-flip`` gives ``flip=False``); a ``**kwargs`` parameter takes the
    arguments named in ``extra``; a parameter no argument matches keeps its default.
    """

    target: str
    rename: Mapping[str, str] = field(default_factory=dict)
    extra: Tuple[str, ...] = ()
    exit_status: bool = False  # the call returns the exit status (else the command exits 0)

    def plan(self, func: Any, dests: Collection[str]) -> Dict[str, Tuple[str, bool]]:
        """``{parameter: (argument, negated)}`` of ``func`` given the parser's ``dests``."""
        plan: Dict[str, Tuple[str, bool]] = {}
        for name, param in inspect.signature(func).parameters.items():
            if param.kind is param.VAR_KEYWORD:
                plan.update({dest: (dest, False) for dest in self.extra})
                continue
            dest = self.rename.get(name, name)
            if dest in dests:
                plan[name] = (dest, False)
            elif f"no_{dest}" in dests:
                plan[name] = (f"no_{dest}", True)
        return plan

    def call(self, args: argparse.Namespace, **values: Any) -> Any:
        """Call the target with ``args`` (``values`` replace parsed arguments of their name)."""
        given = {**vars(args), **values}
        func = _resolve(self.target)
        plan = self.plan(func, given)
        return func(**{p: not given[d] if neg else given[d] for p, (d, neg) in plan.items()})

    def __call__(self, args: argparse.Namespace, **values: Any) -> int:
        """Run the command; its exit status."""
        result = self.call(args, **values)
        return int(result) if self.exit_status else 0


# the options of an approximate search: ``**search_params`` of search_command
_SEARCH_OPTIONS = ("nprobe", "ef_search", "refine")
# GalleryIndex.build's options: ``**options`` of index_command (the index saves the search ones)
_INDEX_OPTIONS = ("kind", "backend", "metric", "normalize", "device", "pca", "nlist", "m")
_INDEX_OPTIONS += ("nbits", "hnsw_m", "ef_construction", *_SEARCH_OPTIONS)

#: The commands that are one call, by command (``"search --store"``: search's other call).
RUNS: Dict[str, Run] = {
    "eval": Run("partreid.engine.eval_run:evaluate_checkpoint"),
    "compare": Run("partreid.report.compare:compare_runs", {"run_args": "runs", "out_dir": "out"}),
    "demo": Run("partreid.demo:run_demo"),
    "visualize": Run("partreid.visualize:visualize"),
    "inspect": Run(
        "partreid.checkpoint:inspect_checkpoint", {"path": "checkpoint", "as_json": "json"}
    ),
    "extract": Run(
        "partreid.commands.extract:extract_command", {"source": "input", "num_workers": "workers"}
    ),
    "export": Run("partreid.commands.export:export_command", {"fmt": "format"}, exit_status=True),
    "serve": Run("partreid.serve.app:serve_command", exit_status=True),
    "index": Run(
        "partreid.commands.search:index_command",
        {"feats_path": "features"},
        extra=_INDEX_OPTIONS,
    ),
    "search": Run(
        "partreid.commands.search:search_command", {"index_path": "index"}, extra=_SEARCH_OPTIONS
    ),
    "search --store": Run(
        "partreid.commands.store_search:search_store_command",
        {"store_uri": "store", "query": "index"},  # argparse puts the one positional in index
    ),
    "ingest": Run(
        "partreid.commands.ingest:ingest_command", {"source": "input", "store_uri": "store"}
    ),
    "store stats": Run(
        "partreid.commands.store:stats_command", {"store_uri": "store", "as_json": "json"}
    ),
    "store delete": Run("partreid.commands.store:delete_command", {"store_uri": "store"}),
    "store tracklets": Run("partreid.commands.link:tracklets_command", {"store_uri": "store"}),
    "link": Run("partreid.commands.link:link_command", {"store_uri": "store", "as_json": "json"}),
}


def cmd_train(args: argparse.Namespace) -> int:
    """``partreid train``: train from a config; a pre-empted run says how to continue."""
    cfg = _resolve("partreid.config:load_config")(args.config, args.overrides)
    resume = None if args.resume is None else (args.resume or "auto")
    interrupted = _resolve("partreid.engine.checkpointing:TrainingInterrupted")
    try:
        _resolve("partreid.engine:train")(cfg, resume=resume)
    except interrupted as exc:  # pre-empted: saved, say how to continue
        print(f"partreid train: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def _test_sets(specs: List[str]) -> List[dict]:
    """``--test NAME=ROOT`` arguments -> ``data.test`` entries."""
    tests = []
    for spec in specs:
        name, _, root = spec.partition("=")
        if not root:
            raise SystemExit(
                f"--test expects NAME=ROOT (e.g. viper=../shared/data/classic/viper), got {spec!r}"
            )
        tests.append(_resolve("partreid.data.datasets.manifest:named_test_set")(name, root))
    return tests


def _eval_overrides(args: argparse.Namespace) -> List[str]:
    """The config overrides of ``partreid eval``: its own plus those its options stand for."""
    over = list(args.overrides)
    if args.rerank:
        over.append("eval.rerank=true")
    if args.distance:
        over.append(f"eval.distance={args.distance}")
    if args.qe:
        over.append(f"eval.query_expansion={args.qe}")
    if args.robustness:
        over.append("eval.robustness.enabled=true")
    if args.test:
        over.append("data.test=" + json.dumps(_test_sets(args.test)))
    return over


def cmd_eval(args: argparse.Namespace) -> int:
    """``partreid eval``: evaluate a checkpoint."""
    return RUNS["eval"](args, overrides=_eval_overrides(args))


def cmd_compare(args: argparse.Namespace) -> int:
    """``partreid compare``: several runs side by side; prints the Markdown."""
    print(RUNS["compare"].call(args)["markdown"])
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """``partreid search``: top-K gallery matches of query features or images (of a store's
    tracklets or crops with ``--store``)."""
    if args.store:
        if args.query is not None:
            raise InvalidValueError("with --store give one QUERY (an image or a folder), no index")
        return RUNS["search --store"](args)
    if args.index is None or args.query is None:
        raise InvalidValueError("search needs INDEX QUERY, or --store STORE QUERY")
    return RUNS["search"](args)


def cmd_list(args: argparse.Namespace) -> int:
    """``partreid list``: the models with their options, and the data sets (no torch needed)."""
    models = _resolve("partreid.catalogue:MODELS")
    print("models:")
    for name in sorted(models):
        print(f"  {name}: " + ", ".join(f"{k}={v!r}" for k, v in models[name][1].items()))
    print("data sets: " + ", ".join(sorted(_resolve("partreid.catalogue:DATASETS"))))
    return 0


# --------------------------------------------------------------------------------------------
# The arguments of each command
# --------------------------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a model from a config")
    t.add_argument(
        "-c", "--config", required=True, help="YAML config (configs/<model>/<data>.yaml)"
    )
    t.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="CKPT",
        help="continue from CKPT (default: OUTPUT_DIR/last.pth)",
    )
    t.add_argument("overrides", nargs="*", help="section.key=value overrides")
    t.set_defaults(func=cmd_train)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("-c", "--config", help="YAML config (default: the one saved in the checkpoint)")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", help="report folder (default: the config's output_dir)")
    e.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    e.add_argument("--distance", choices=["euclidean", "cosine"])
    e.add_argument("--qe", choices=["none", "average", "alpha"], help="query expansion")
    e.add_argument(
        "--test",
        action="append",
        metavar="NAME=ROOT",
        help="also test on another data set (repeatable): a data set name (market1501, "
        "manifest, ...) or a classic set with its standard protocol (viper, prid, grid, "
        "ilid, caviar4reid), e.g. viper=../shared/data/classic/viper",
    )
    e.add_argument(
        "--only-test",
        action="store_true",
        help="evaluate only the --test sets, not the config's own data set",
    )
    e.add_argument(
        "--robustness",
        action="store_true",
        help="also repeat the test with occluded / cut-off queries (eval.robustness.* settings)",
    )
    e.add_argument("overrides", nargs="*")
    e.set_defaults(func=cmd_eval)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    cp = sub.add_parser("compare", help="one table (and robustness figure) of several runs")
    cp.add_argument(
        "runs", nargs="+", metavar="RUN", help="run folder (or metrics.json), or LABEL=RUN"
    )
    cp.add_argument("--out", default="compare", help="output folder (default: ./compare)")
    cp.set_defaults(func=cmd_compare)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="generate a synthetic data set, train on the CPU, report")
    d.add_argument("--out", default="partreid_demo", help="output folder (default: partreid_demo)")
    d.add_argument("--model", default=None, help="model to train (default: cgpn, CPU-sized)")
    d.add_argument("--epochs", type=int, default=None)
    d.set_defaults(func=RUNS["demo"])


def _add_visualize(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("visualize", help="draw figures of a trained model")
    v.add_argument(
        "what",
        choices=["activations", "ranked", "abp", "rp"],
        help="activations: per-part activation maps (CGPN Fig. 5); ranked: ranked lists; "
        "abp: activation balanced pooling borders; rp: original vs receptive-partition "
        "responses (RMGL Fig. 4)",
    )
    v.add_argument("-c", "--config", help="YAML config (default: the one saved in the checkpoint)")
    v.add_argument("--checkpoint", required=True)
    v.add_argument("--out", default=None, help="output PNG (default: in the run folder)")
    v.add_argument("--num", type=int, default=6, help="number of images")
    v.add_argument("overrides", nargs="*")
    v.set_defaults(func=RUNS["visualize"])


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    ins = sub.add_parser("inspect", help="print what a checkpoint holds (read safely)")
    ins.add_argument("checkpoint", help="a .pth checkpoint")
    ins.add_argument("--json", action="store_true", help="machine-readable JSON output")
    ins.set_defaults(func=RUNS["inspect"])


def _add_extract(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("extract", help="features of a folder, manifest, image or video -> .npz")
    x.add_argument("model", help="a partreid checkpoint (.pth) or an exported .onnx")
    x.add_argument(
        "input",
        help="a folder of crops (recursive), a manifest CSV (image,pid,camid[,split]), one "
        "image, or a video file with --boxes",
    )
    x.add_argument("--out", required=True, help="features file to write (.npz)")
    x.add_argument("--boxes", help="MOT box file for a video: frame,id,x,y,w,h,... (1-based)")
    x.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda:0")
    x.add_argument("--batch-size", type=int, default=64)
    x.add_argument("--workers", type=int, default=2, help="data loading processes")
    x.add_argument("--no-flip", action="store_true", help="no flip-averaging")
    x.add_argument("--no-amp", action="store_true", help="full precision on CUDA")
    x.add_argument("--no-progress", action="store_true", help="no progress bar")
    x.set_defaults(func=RUNS["extract"])


def _add_export(sub: argparse._SubParsersAction) -> None:
    xp = sub.add_parser("export", help="inference-only weights or an ONNX model")
    xp.add_argument("checkpoint", help="a partreid checkpoint (.pth)")
    xp.add_argument("--format", choices=["weights", "onnx", "openvino"], required=True)
    xp.add_argument("--out", required=True, help="output file (.pth, .onnx or OpenVINO .xml)")
    xp.add_argument(
        "--check-images",
        metavar="DIR",
        help="images for the ONNX parity check (default: the checkpoint's data set folder)",
    )
    xp.add_argument(
        "--no-flip", action="store_true", help="ONNX without flip-averaging in the graph"
    )
    xp.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed ONNX/PyTorch difference of L2-normalised features (default 1e-4)",
    )
    xp.add_argument(
        "--int8",
        action="store_true",
        help="INT8 post-training quantisation (NNCF), its held-out mAP change printed",
    )
    xp.add_argument(
        "--calibration",
        metavar="DIR",
        help="INT8 calibration crops (default: the checkpoint's training set)",
    )
    xp.add_argument(
        "--max-map-drop",
        type=float,
        default=1.0,
        help="refuse an INT8 model losing more held-out mAP points than this (default 1.0)",
    )
    xp.set_defaults(func=RUNS["export"])


def _add_serve(sub: argparse._SubParsersAction) -> None:
    sv = sub.add_parser("serve", help="search a gallery over HTTP, with a web page")
    sv.add_argument("checkpoint", help="partreid checkpoint (.pth) or exported ONNX model")
    what = sv.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--gallery",
        help="a folder of crops (extracted and indexed once, then cached), a features .npz "
        "from `partreid extract`, or an index folder from `partreid index`",
    )
    what.add_argument(
        "--store",
        help="a gallery store (a folder, or milvus:///abs/site.db, milvus://host:port) filled "
        "by `partreid ingest`: search it by camera, time and tracklet",
    )
    sv.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: local only)"
    )
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument(
        "--token-file",
        help="a file (chmod 600) holding the access token every /api request must present "
        "(Authorization: Bearer, or the page's login); required unless --host is loopback",
    )
    sv.add_argument(
        "--audit-log",
        help="append one JSON line per search and deletion here (default with --store: "
        "audit.log in the store folder, else in the cache folder)",
    )
    sv.add_argument(
        "--cache",
        help="cache folder for a crop folder's features and index "
        "(default: ~/.cache/partreid/serve)",
    )
    sv.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    sv.add_argument("--batch-size", type=int, default=64, help="extraction batch size")
    sv.add_argument("--max-upload-mb", type=float, default=8.0, help="largest upload (MiB)")
    sv.add_argument("--max-pixels", type=int, default=16_777_216, help="largest image (pixels)")
    sv.add_argument("--max-topk", type=int, default=100, help="largest top-K a request may ask")
    sv.add_argument("--max-page-size", type=int, default=200, help="largest gallery page")
    sv.add_argument(
        "--runtime",
        choices=["auto", "onnx", "torch"],
        default="auto",
        help="model runtime: auto = ONNX Runtime on the CPU when installed (exported and "
        "checked once, cached), else PyTorch",
    )
    sv.set_defaults(func=RUNS["serve"])


def _add_index(sub: argparse._SubParsersAction) -> None:
    ix = sub.add_parser("index", help="index a gallery features file for search (faiss or torch)")
    ix.add_argument("features", help="gallery features file (.npz from `partreid extract`)")
    ix.add_argument("--out", required=True, help="index folder to write")
    ix.add_argument(
        "--kind",
        choices=["exact", "ivfpq", "ivfflat", "hnsw"],
        default="exact",
        help="exact (default) or an approximate index for large galleries: ivfpq (PCA + "
        "inverted file + product quantisation, refined exactly), ivfflat, hnsw",
    )
    ix.add_argument("--backend", choices=["auto", "faiss", "torch"], default="auto")
    ix.add_argument(
        "--metric",
        choices=["euclidean", "cosine"],
        help="default: the features file's (the training config's eval.distance), as eval ranks",
    )
    ix.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise before the metric (default: the features file's eval.normalize)",
    )
    ix.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda:0")
    ix.add_argument("--pca", type=int, help="approximate kinds: PCA dims first (0 = none)")
    ix.add_argument("--nlist", type=int, help="ivf*: number of k-means cells")
    ix.add_argument("--nprobe", type=int, help="ivf*: cells scanned per query (saved default)")
    ix.add_argument("--m", type=int, help="ivfpq: bytes per vector (PQ sub-quantisers)")
    ix.add_argument("--nbits", type=int, help="ivfpq: bits per sub-quantiser code")
    ix.add_argument("--hnsw-m", type=int, help="hnsw: links per node")
    ix.add_argument("--ef-construction", type=int, help="hnsw: build beam width")
    ix.add_argument("--ef-search", type=int, help="hnsw: search beam width (saved default)")
    ix.add_argument("--refine", type=int, help="approximate kinds: shortlist = refine x topk")
    ix.set_defaults(func=RUNS["index"])


def _add_search(sub: argparse._SubParsersAction) -> None:
    se = sub.add_parser("search", help="top-K gallery matches of query features or images")
    se.add_argument(
        "index",
        nargs="?",
        help="index folder (`partreid index`) or a gallery features .npz (with --store: QUERY)",
    )
    se.add_argument("query", nargs="?", help="query features (.npz), an image, or a folder")
    se.add_argument("--topk", type=int, default=10, help="matches per query (default: 10)")
    se.add_argument(
        "--checkpoint",
        help="model for query images (default: the checkpoint recorded in the gallery's features)",
    )
    se.add_argument(
        "--rerank", action="store_true", help="k-reciprocal re-ranking of each query's shortlist"
    )
    se.add_argument("--out", help="write results.json or results.csv instead of printing")
    se.add_argument(
        "--skip-same-camera",
        action="store_true",
        help="leave out gallery rows of the query's identity and camera (as eval does)",
    )
    se.add_argument("--backend", choices=["auto", "faiss", "torch"], default="auto")
    se.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda:0")
    se.add_argument("--batch-size", type=int, default=64, help="extraction batch size")
    se.add_argument("--nprobe", type=int, help="ivf*: cells scanned (default: the index's)")
    se.add_argument("--ef-search", type=int, help="hnsw: beam width (default: the index's)")
    se.add_argument("--refine", type=int, help="shortlist = refine x topk (default: the index's)")
    _add_store_filters(se)
    se.set_defaults(func=cmd_search)


def _add_store_filters(se: argparse.ArgumentParser) -> None:
    st = se.add_argument_group("gallery store (--store)")
    st.add_argument("--store", help="search a store: a folder or milvus://... (then: QUERY only)")
    st.add_argument(
        "--by",
        choices=["tracklet", "crop", "identity"],
        default="tracklet",
        help="rank tracklets, crops, or people (site identities, each with its route)",
    )
    st.add_argument("--cameras", help="only these cameras: 3,4,7 or 3-7")
    st.add_argument("--after", help="only from this time on (ISO 8601, UTC unless +HH:MM)")
    st.add_argument("--before", help="only before this time (ISO 8601)")
    st.add_argument("--tracklet", help="query by a stored tracklet: CAMERA:TRACK (or crop:ID)")


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    ig = sub.add_parser("ingest", help="crops of a camera (folder, manifest, video) into a store")
    ig.add_argument("checkpoint", help="trained checkpoint (.pth) or exported .onnx")
    ig.add_argument("input", help="folder of crops, manifest CSV, or a video (with --boxes)")
    ig.add_argument("--store", required=True, help="store: a folder, or milvus://...")
    ig.add_argument("--boxes", help="MOT box file for a video (frame,id,x,y,w,h,...)")
    ig.add_argument("--camera", type=int, help="camera id (default: from Market-style names)")
    ig.add_argument("--start-time", help="time of the first frame, ISO 8601 (UTC unless +HH:MM)")
    ig.add_argument("--fps", type=float, help="frames per second (default: the video's own)")
    ig.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda:0")
    ig.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    ig.add_argument("--num-workers", type=int, default=2, help="loader worker processes")
    ig.add_argument("--no-progress", action="store_true", help="no progress bar")
    ig.add_argument("--link", action="store_true", help="then link the store (`partreid link`)")
    ig.add_argument("--transitions", help="with --link: the site's moves (see `partreid link`)")
    ig.add_argument(
        "--runtime",
        choices=["torch", "onnx", "auto"],
        default="torch",
        help="model runtime: torch, or onnx = ONNX Runtime on a checked export of the checkpoint"
        " (made once, cached), auto = onnx on the CPU when installed (an exported .onnx/.xml"
        " runs in its own runtime)",
    )
    ig.set_defaults(func=RUNS["ingest"])


def _add_link(sub: argparse._SubParsersAction) -> None:
    lk = sub.add_parser("link", help="site identities: which tracklets are one person, kept")
    lk.add_argument("store", help="a folder, or milvus://...")
    lk.add_argument("--cameras", help="link only tracklets of these cameras: 3,4,7 or 3-7")
    lk.add_argument("--after", help="link only tracklets from this time on (ISO 8601)")
    lk.add_argument("--before", help="link only tracklets before this time (ISO 8601)")
    lk.add_argument(
        "--transitions",
        help="CSV from_camera,to_camera,min_s,max_s: the moves a person can make (no other)",
    )
    lk.add_argument(
        "--threshold",
        type=float,
        help="largest distance 2 - 2 cos of one person (default: from the store's distances)",
    )
    lk.add_argument("--k", type=int, help="neighbours and next steps per tracklet (default: 10)")
    lk.add_argument("--no-center", action="store_true", help="keep each camera's mean feature")
    lk.add_argument("--json", action="store_true", help="print the report as JSON")
    lk.set_defaults(func=RUNS["link"])


def _add_store(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("store", help="what a store holds (stats, tracklets), forgetting (delete)")
    ops = sp.add_subparsers(dest="store_command", required=True, metavar="{stats,delete,tracklets}")
    stats = ops.add_parser("stats", help="counts per camera, time span, dimension, model, people")
    stats.add_argument("store", help="a folder, or milvus://...")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.add_argument("--cameras", help="count people on these cameras: 3,4,7 or 3-7")
    stats.add_argument("--after", help="count people seen from this time on (ISO 8601)")
    stats.add_argument("--before", help="count people seen before this time (ISO 8601)")
    tr = ops.add_parser("tracklets", help="tracklets with their site identities, to CSV or JSON")
    tr.add_argument("store", help="a folder, or milvus://...")
    tr.add_argument("--out", required=True, help="FILE.csv or FILE.json")
    tr.add_argument("--identity", type=int, help="only this person's (site identity)")
    tr.add_argument("--cameras", help="only these cameras: 3,4,7 or 3-7")
    tr.add_argument("--after", help="only tracklets from this time on (ISO 8601)")
    tr.add_argument("--before", help="only tracklets before this time (ISO 8601)")
    tr.set_defaults(func=RUNS["store tracklets"])
    de = ops.add_parser("delete", help="delete crops (conditions combine with AND)")
    de.add_argument("store", help="a folder, or milvus://...")
    de.add_argument("--before", help="crops seen before this time (ISO 8601)")
    de.add_argument("--camera", type=int, help="crops of this camera")
    de.add_argument("--track", help="one tracklet: CAMERA:TRACK (or TRACK with --camera)")
    de.add_argument("--identity", help="one person everywhere: a site identity (alone)")
    stats.set_defaults(func=RUNS["store stats"])
    de.set_defaults(func=RUNS["store delete"])


def _add_list(sub: argparse._SubParsersAction) -> None:
    ls = sub.add_parser("list", help="list models (with their options) and data sets")
    ls.set_defaults(func=cmd_list)


#: The commands in the order ``partreid --help`` lists them.
COMMANDS = (
    _add_train,
    _add_eval,
    _add_compare,
    _add_demo,
    _add_visualize,
    _add_inspect,
    _add_extract,
    _add_export,
    _add_serve,
    _add_index,
    _add_search,
    _add_ingest,
    _add_link,
    _add_store,
    _add_list,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``partreid`` argument parser: one sub-command per entry of :data:`COMMANDS`."""
    p = argparse.ArgumentParser(prog="partreid", description="Part-based person re-identification.")
    sub = p.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run one ``partreid`` command; a user error is printed in one line (exit status 2)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PartreidError as exc:  # what the user gave is wrong; anything else is a bug
        if os.environ.get("PARTREID_DEBUG"):
            raise
        print(f"partreid {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
