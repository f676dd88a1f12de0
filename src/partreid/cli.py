"""``partreid`` command line: train, eval, demo, visualize, list. No logic of its own lives here.

Each command is one ``_add_<command>`` function that registers its arguments and its
``cmd_<command>``, which turns the parsed arguments into one call of the module doing the work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from .checkpoint import inspect_checkpoint
from .commands.export import export_command
from .commands.extract import extract_command
from .commands.ingest import ingest_command
from .commands.search import index_command, search_command
from .commands.store import delete_command, stats_command
from .commands.store_search import search_store_command
from .config import load_config
from .data import list_datasets
from .data.datasets.manifest import named_test_set
from .demo import run_demo
from .engine import train
from .engine.checkpointing import TrainingInterrupted
from .engine.eval_run import evaluate_checkpoint
from .errors import InvalidValueError, PartreidError
from .models import list_models, model_options
from .report.compare import compare_runs
from .serve.app import serve_command
from .visualize import visualize

# --------------------------------------------------------------------------------------------
# What each command calls
# --------------------------------------------------------------------------------------------


def _overrides(args: argparse.Namespace) -> List[str]:
    return list(getattr(args, "overrides", []) or [])


def cmd_train(args: argparse.Namespace) -> int:
    """``partreid train``: train from a config; a pre-empted run says how to continue."""
    cfg = load_config(args.config, _overrides(args))
    resume = None if args.resume is None else (args.resume or "auto")
    try:
        train(cfg, resume=resume)
    except TrainingInterrupted as exc:  # pre-empted: saved, say how to continue
        print(f"partreid train: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """``partreid inspect``: print what a checkpoint holds."""
    inspect_checkpoint(args.checkpoint, as_json=args.json)
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
        tests.append(named_test_set(name, root))
    return tests


def _eval_overrides(args: argparse.Namespace) -> List[str]:
    over = _overrides(args)
    if args.rerank:
        over.append("eval.rerank=true")
    if args.distance:
        over.append(f"eval.distance={args.distance}")
    if args.qe:
        over.append(f"eval.query_expansion={args.qe}")
    if getattr(args, "robustness", False):
        over.append("eval.robustness.enabled=true")
    if args.test:
        over.append("data.test=" + json.dumps(_test_sets(args.test)))
    return over


def cmd_eval(args: argparse.Namespace) -> int:
    """``partreid eval``: evaluate a checkpoint."""
    evaluate_checkpoint(
        args.checkpoint, args.config, _eval_overrides(args), out=args.out, only_test=args.only_test
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``partreid compare``: several runs side by side; prints the Markdown."""
    print(compare_runs(args.runs, args.out)["markdown"])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``partreid demo``: synthetic data, a CPU-sized training run, a report."""
    run_demo(args.out, model=args.model, epochs=args.epochs)
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    """``partreid visualize``: figures of a trained model."""
    visualize(args.what, args.config, args.checkpoint, args.out, args.num, _overrides(args))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``partreid list``: the models with their options, and the data sets."""
    print("models:")
    for m in list_models():
        print(f"  {m}: " + ", ".join(f"{k}={v!r}" for k, v in model_options(m).items()))
    print("data sets: " + ", ".join(list_datasets()))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    """``partreid extract``: features of crops, a manifest, an image or a video."""
    extract_command(
        args.model,
        args.input,
        args.out,
        boxes=args.boxes,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.workers,
        flip=not args.no_flip,
        amp=not args.no_amp,
        progress=not args.no_progress,
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``partreid export``: inference-only weights or an ONNX model."""
    return export_command(
        args.checkpoint,
        args.format,
        args.out,
        check_images=args.check_images,
        flip=not args.no_flip,
        tolerance=args.tolerance,
        int8=args.int8,
        calibration=args.calibration,
        max_map_drop=args.max_map_drop,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """``partreid serve``: search a gallery over HTTP."""
    return serve_command(
        args.checkpoint,
        args.gallery,
        host=args.host,
        port=args.port,
        cache=args.cache,
        device=args.device,
        batch_size=args.batch_size,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        max_topk=args.max_topk,
        max_page_size=args.max_page_size,
        runtime=args.runtime,
        store=args.store,
        token_file=args.token_file,
        audit_log=args.audit_log,
    )


def cmd_index(args: argparse.Namespace) -> int:
    """``partreid index``: index a gallery features file."""
    index_command(
        args.features,
        args.out,
        kind=args.kind,
        backend=args.backend,
        metric=args.metric,
        normalize=args.normalize,
        device=args.device,
        pca=args.pca,
        nlist=args.nlist,
        nprobe=args.nprobe,
        m=args.m,
        nbits=args.nbits,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        ef_search=args.ef_search,
        refine=args.refine,
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """``partreid search``: top-K gallery matches of query features or images (of a store's
    tracklets or crops with ``--store``)."""
    if args.store:
        return _search_store(args)
    if args.index is None or args.query is None:
        raise InvalidValueError("search needs INDEX QUERY, or --store STORE QUERY")
    search_command(
        args.index,
        args.query,
        topk=args.topk,
        checkpoint=args.checkpoint,
        rerank=args.rerank,
        out=args.out,
        skip_same_camera=args.skip_same_camera,
        backend=args.backend,
        device=args.device,
        batch_size=args.batch_size,
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        refine=args.refine,
    )
    return 0


def _search_store(args: argparse.Namespace) -> int:
    if args.query is not None:  # argparse puts the one positional into ``index``
        raise InvalidValueError("with --store give one QUERY (an image or a folder), no index")
    search_store_command(
        args.store,
        args.index,
        topk=args.topk,
        by=args.by,
        cameras=args.cameras,
        after=args.after,
        before=args.before,
        tracklet=args.tracklet,
        checkpoint=args.checkpoint,
        out=args.out,
        device=args.device,
    )
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    """``partreid ingest``: crops of a camera into a store."""
    ingest_command(
        args.checkpoint,
        args.input,
        args.store,
        boxes=args.boxes,
        camera=args.camera,
        start_time=args.start_time,
        fps=args.fps,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=not args.no_progress,
    )
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    """``partreid store delete|stats``."""
    if args.store_command == "stats":
        stats_command(args.store, as_json=args.json)
    else:
        delete_command(args.store, before=args.before, camera=args.camera, track=args.track)
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
    d.set_defaults(func=cmd_demo)


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
    v.set_defaults(func=cmd_visualize)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    ins = sub.add_parser("inspect", help="print what a checkpoint holds (read safely)")
    ins.add_argument("checkpoint", help="a .pth checkpoint")
    ins.add_argument("--json", action="store_true", help="machine-readable JSON output")
    ins.set_defaults(func=cmd_inspect)


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
    x.set_defaults(func=cmd_extract)


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
    xp.set_defaults(func=cmd_export)


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
    sv.set_defaults(func=cmd_serve)


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
    ix.set_defaults(func=cmd_index)


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
        "--by", choices=["tracklet", "crop"], default="tracklet", help="rank tracklets or crops"
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
    ig.set_defaults(func=cmd_ingest)


def _add_store(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("store", help="what a store holds (stats), forgetting (delete)")
    ops = sp.add_subparsers(dest="store_command", required=True, metavar="{stats,delete}")
    stats = ops.add_parser("stats", help="counts per camera, time span, dimension, model")
    stats.add_argument("store", help="a folder, or milvus://...")
    stats.add_argument("--json", action="store_true", help="print JSON")
    de = ops.add_parser("delete", help="delete crops (conditions combine with AND)")
    de.add_argument("store", help="a folder, or milvus://...")
    de.add_argument("--before", help="crops seen before this time (ISO 8601)")
    de.add_argument("--camera", type=int, help="crops of this camera")
    de.add_argument("--track", help="one tracklet: CAMERA:TRACK (or TRACK with --camera)")
    for p in (stats, de):
        p.set_defaults(func=cmd_store)


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
