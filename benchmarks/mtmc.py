"""Site identities (``partreid link``) measured with the field's metric: IDF1 / IDP / IDR and
pairwise precision / recall, on a synthetic multi-camera site and on real images; link time.

    python benchmarks/mtmc.py site --demo DIR          # DIR: a `partreid demo --out DIR` run
    python benchmarks/mtmc.py real --checkpoint CKPT   # CUHK03-NP identities held out
    python benchmarks/mtmc.py timing --sizes 1000 10000 100000

``site``: :func:`partreid.data.datasets.synthetic_site.generate_site` (6 cameras, 120 people new
to the demo's data set, 300 s) into ``--out``; its videos are ingested with the demo-trained
model (``DIR/run/last.pth``) into an embedded store, and the same tracks are put in a second
store with ground-truth features (each person one random unit vector: linking limited only by
the algorithm and its rules, the upper bound). Per store: no linking (each tracklet its own
identity), ``link`` with the threshold chosen from the store's distances, the same with the
site's ``transitions.csv``, and a threshold sweep (how sensitive the choice is).

Scores: IDF1 / IDP / IDR by py-motmetrics over every box of every camera (frame ids made unique
per camera, ``camera * 10**6 + frame``, as multi-camera evaluations do; a hypothesis box matches
a ground-truth box at IoU >= 0.5; the trackers' boxes are the site's own MOT boxes, so the score
is the linking's alone), and pairwise precision / recall / F1 over all pairs of tracklets (a pair
is positive when both show one person).

``real``: the ``--carve`` identities (default 100, seed 0) that ``configs/bot/cpu_mobilenet.yaml``
holds out of CUHK03-NP's training split (``../shared/data``), each camera view's crops of an
identity one tracklet (camera 1 or 2) at a random time, embedded with ``--checkpoint``; the
same scores over tracklet pairs (no boxes: IDF1 over crops, one frame per crop).

``timing``: :func:`partreid.store.link.link` on synthetic tracklet features (identities of 2-8
tracklets, ``--dim``-d, a spread that makes them linkable, random cameras and times over a day;
no transitions: the kNN graph is built, the costlier case) at each size: wall and CPU seconds
of the kNN graph alone and of the whole link, the graph's recall of same-person neighbours,
and the pairwise scores; with ``--store``, also through an embedded store (read, link, write
the identities; then again, which changes nothing). Nothing is asserted; figures are printed (and written as JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PARTREID_SHARED", ROOT.parent / "shared"))
FRAME_BASE = 10**6  # frame ids unique per camera: camera * FRAME_BASE + frame
START = "2026-12-03T14:00:00Z"


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------
def pairwise(labels: List, truth: List) -> Dict[str, float]:
    """Pairwise precision, recall and F1 of ``labels`` against ``truth`` (over all pairs)."""
    both = Counter(zip(labels, truth))
    tp = sum(v * (v - 1) // 2 for v in both.values())
    pos = sum(v * (v - 1) // 2 for v in Counter(labels).values())
    true = sum(v * (v - 1) // 2 for v in Counter(truth).values())
    p = tp / pos if pos else 1.0
    r = tp / true if true else 1.0
    return {"pair_p": p, "pair_r": r, "pair_f1": 2 * p * r / (p + r) if p + r else 0.0}


def _iou_distance(a: np.ndarray, b: np.ndarray, min_iou: float = 0.5) -> np.ndarray:
    """1 - IoU of boxes ``x, y, w, h`` (NaN where IoU < min_iou): motmetrics' distance matrix
    (its own iou_matrix uses np.asfarray, gone in numpy 2)."""
    if not len(a) or not len(b):
        return np.empty((len(a), len(b)))
    ax0, ay0, ax1, ay1 = a[:, 0], a[:, 1], a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1[:, None], bx1) - np.maximum(ax0[:, None], bx0), 0, None)
    ih = np.clip(np.minimum(ay1[:, None], by1) - np.maximum(ay0[:, None], by0), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + b[:, 2] * b[:, 3] - inter
    iou = inter / np.maximum(union, 1e-12)
    return np.where(iou >= min_iou, 1.0 - iou, np.nan)


def id_scores(gt: np.ndarray, hyp: np.ndarray) -> Dict[str, float]:
    """IDF1 / IDP / IDR by py-motmetrics of rows ``(frame uid, id, x, y, w, h)``."""
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=False)
    frames = np.union1d(gt[:, 0], hyp[:, 0])
    g_at = {f: gt[gt[:, 0] == f] for f in np.unique(gt[:, 0])}
    h_at = {f: hyp[hyp[:, 0] == f] for f in np.unique(hyp[:, 0])}
    empty = np.zeros((0, 6))
    for f in frames.tolist():
        g, h = g_at.get(f, empty), h_at.get(f, empty)
        acc.update(
            g[:, 1].astype(np.int64).tolist(),
            h[:, 1].astype(np.int64).tolist(),
            _iou_distance(g[:, 2:6], h[:, 2:6]),
            frameid=int(f),
        )
    summary = mm.metrics.create().compute(acc, metrics=["idf1", "idp", "idr"], name="site")
    return {k: float(summary[k].iloc[0]) for k in ("idf1", "idp", "idr")}


# --------------------------------------------------------------------------------------------
# The site
# --------------------------------------------------------------------------------------------
def site_rows(site: str) -> Tuple[np.ndarray, Dict[str, int], Dict[str, object]]:
    """The MOT rows of every camera as ``(frame uid, camera, track, x, y, w, h)``, each
    tracklet's person (``"camera:track" -> pid``) and the ground truth JSON."""
    from partreid.data.datasets.synthetic_site import read_site
    from partreid.data.sources import read_mot_boxes

    gt = read_site(site)
    rows, person = [], {}
    for v in gt["videos"]:
        cam = int(v["camera"])
        r = read_mot_boxes(os.path.join(site, v["boxes"]))
        rows.append(
            np.column_stack([cam * FRAME_BASE + r[:, 0], np.full(len(r), cam), r[:, 1], r[:, 2:6]])
        )
        person.update({f"{cam}:{int(k)}": int(t["pid"]) for k, t in v["tracks"].items()})
    return np.concatenate(rows), person, gt


def score_site(rows: np.ndarray, person: Dict[str, int], identity: Dict[str, int]) -> dict:
    """IDF1 / IDP / IDR over the boxes and pairwise scores over the tracklets."""
    keys = [f"{int(c)}:{int(t)}" for c, t in rows[:, 1:3]]
    gt = np.column_stack([rows[:, 0], [person[k] for k in keys], rows[:, 3:7]])
    hyp = np.column_stack([rows[:, 0], [identity[k] for k in keys], rows[:, 3:7]])
    tracks = sorted(person)
    out = id_scores(gt, hyp)
    out.update(pairwise([identity[k] for k in tracks], [person[k] for k in tracks]))
    out["identities"] = len(set(identity[k] for k in tracks))
    out["people"] = len(set(person.values()))
    return out


def truth_store(site: str, uri: str, dim: int = 64, seed: int = 0) -> None:
    """A store of the site's boxes with ground-truth features: each person a random unit
    vector, every crop of theirs exactly it."""
    from partreid.store import CropBatch, open_store
    from partreid.utils.times import parse_time

    rows, person, gt = site_rows(site)
    rng = np.random.default_rng(seed)
    pids = sorted(set(person.values()))
    vec = {p: v for p, v in zip(pids, rng.normal(size=(len(pids), dim)))}
    keys = [f"{int(c)}:{int(t)}" for c, t in rows[:, 1:3]]
    t0 = parse_time(gt["start"], "start")
    frame = rows[:, 0] % FRAME_BASE
    box = rows[:, 3:7]
    with open_store(uri, create=True, info={"dim": dim, "model": {"name": "ground truth"}}) as st:
        st.add(
            CropBatch(
                ids=np.arange(len(rows)),
                features=np.stack([vec[person[k]] for k in keys]),
                camera=rows[:, 1],
                timestamp=t0 + (frame - 1) / float(gt["fps"]),
                track_id=rows[:, 2],
                frame=frame,
                box=np.column_stack([box[:, :2], box[:, :2] + box[:, 2:]]),
                pid=[person[k] for k in keys],
            )
        )


def model_store(site: str, checkpoint: str, uri: str) -> float:
    """Ingest the site's videos with ``checkpoint`` into ``uri`` (skips what it holds);
    returns the seconds it took."""
    from partreid.commands.ingest import ingest_command
    from partreid.data.datasets.synthetic_site import read_site

    t = time.time()
    for v in read_site(site)["videos"]:
        ingest_command(
            checkpoint,
            os.path.join(site, v["file"]),
            uri,
            boxes=os.path.join(site, v["boxes"]),
            camera=int(v["camera"]),
            start_time=START,
            device="cpu",
            num_workers=0,
            progress=False,
        )
    return time.time() - t


def _link_and_score(uri: str, rows, person, **kw) -> dict:
    """Link the store from scratch with ``kw`` and score."""
    from partreid.store import open_store
    from partreid.store.link import link_store

    with open_store(uri) as st:
        _drop_identities(st)
        t = time.time()
        rep = link_store(st, **kw)
        seconds = time.time() - t
        table = st.tracklets()
    out = score_site(rows, person, dict(zip(table.keys, table.identity.tolist())))
    out.update(
        link_seconds=round(seconds, 2), threshold=round(rep.threshold, 4), how=rep.threshold_how
    )
    return out


def _drop_identities(st) -> None:
    """Remove every identity from a store (benchmark only: linking from scratch again)."""
    if st.backend != "embedded":
        raise SystemExit("the benchmark re-links embedded stores only")
    with st._lock, st._transaction() as db:  # noqa: SLF001 (a benchmark's shortcut)
        db.execute("DELETE FROM identities")
        db.execute("DELETE FROM identity_merges")
        db.execute("DELETE FROM meta WHERE key='next_identity'")


def evaluate_store(name: str, uri: str, site: str, sweep: List[float]) -> List[dict]:
    """No linking, link (threshold chosen), link + transitions, and the threshold sweep."""
    from partreid.store import open_store
    from partreid.store.link import read_transitions

    rows, person, _ = site_rows(site)
    with open_store(uri) as st:
        keys = st.tracklets().keys
    results = [
        {
            "store": name,
            "variant": "no linking",
            **score_site(rows, person, {k: i for i, k in enumerate(keys)}),
        }
    ]
    moves = read_transitions(os.path.join(site, "transitions.csv"))
    results.append({"store": name, "variant": "link", **_link_and_score(uri, rows, person)})
    results.append(
        {
            "store": name,
            "variant": "link + transitions",
            **_link_and_score(uri, rows, person, transitions=moves),
        }
    )
    for thr in sweep:
        r = _link_and_score(uri, rows, person, threshold=thr, transitions=moves)
        results.append({"store": name, "variant": f"link + transitions, threshold {thr}", **r})
    return results


def run_site(args) -> List[dict]:
    from partreid.data.datasets.synthetic import generate_synthetic
    from partreid.data.datasets.synthetic_site import generate_site

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.demo) / "data" if args.demo else out / "data"
    if not (data / "synthetic.json").exists():
        generate_synthetic(str(data))
    site = out / "site"
    if not (site / "site.json").exists():
        t = time.time()
        generate_site(
            str(site), str(data), cameras=args.cameras, people=args.people, seconds=args.seconds
        )
        print(f"site generated in {time.time() - t:.0f} s: {site}")
    results = []
    truth = out / "store_truth"
    if not truth.exists():
        truth_store(str(site), str(truth))
    results += evaluate_store("ground-truth features", str(truth), str(site), [])
    ckpt = args.checkpoint or (str(Path(args.demo) / "run" / "last.pth") if args.demo else None)
    if ckpt:
        store = out / "store_model"
        seconds = model_store(str(site), ckpt, str(store))
        print(f"ingest with {ckpt}: {seconds:.0f} s")
        results += evaluate_store("demo model", str(store), str(site), args.sweep)
    return results


# --------------------------------------------------------------------------------------------
# Real images: CUHK03-NP identities held out of training
# --------------------------------------------------------------------------------------------
def run_real(args) -> List[dict]:
    from partreid.data.datasets import build_dataset
    from partreid.inference import Extractor
    from partreid.store.link import Tracklets, link

    root = SHARED / "data" / "cuhk03np-detected"
    if not root.is_dir():
        print(f"no CUHK03-NP at {root}: skipped")
        return []
    ds = build_dataset("cuhk03", str(root), variant="detected", carve_val=args.carve, seed=0)
    items = list(ds.query) + list(ds.gallery)  # the carved identities: never trained on
    ext = Extractor(args.checkpoint, device="cpu", batch_size=64, num_workers=0, progress=False)
    feats = ext([it[0] for it in items])
    pids = np.array([it[1] for it in items])
    cams = np.array([it[2] for it in items]) + 1
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, key in enumerate(zip(pids.tolist(), cams.tolist())):
        groups.setdefault(key, []).append(i)
    rng = np.random.default_rng(0)
    keys, cam, start, f, truth, crops = [], [], [], [], [], []
    for (pid, c), idx in sorted(groups.items()):
        v = feats[idx] / np.linalg.norm(feats[idx], axis=1, keepdims=True)
        keys.append(f"{c}:{len(keys)}")
        cam.append(c)
        start.append(float(rng.uniform(0, 600)))
        f.append(v.mean(0))
        truth.append(pid)
        crops.append(len(idx))
    t = Tracklets(keys, cam, start, np.asarray(start) + 5.0, np.stack(f))
    out = []
    cross = (t.features @ t.features.T) - 10.0 * (
        np.asarray(cam)[:, None] == np.asarray(cam)[None, :]
    )
    truth_arr = np.asarray(truth)
    rank1 = float(np.mean(truth_arr[cross.argmax(1)] == truth_arr))  # its other view is nearest
    print(f"the model: the other camera's view is the nearest for {100 * rank1:.1f}% of tracklets")
    runs = [("no linking", None), ("link", {"center": True})]  # as link_store by default
    runs += [(f"link, threshold {thr}", {"threshold": thr, "center": True}) for thr in args.sweep]
    for variant, kw in runs:
        if kw is None:
            labels = list(range(len(keys)))
            extra = {}
        else:
            tic = time.time()
            r = link(t, **kw)
            labels = r.identity.tolist()
            extra = {
                "threshold": round(r.threshold, 4),
                "link_seconds": round(time.time() - tic, 2),
                "how": r.how,
            }
        crop_labels = [lab for lab, n in zip(labels, crops) for _ in range(n)]
        crop_truth = [p for p, n in zip(truth, crops) for _ in range(n)]
        res = {
            "store": f"CUHK03-NP held-out ({len(set(truth))} ids, {len(keys)} tracklets)",
            "variant": variant,
        }
        res.update(_crop_id_scores(crop_labels, crop_truth))
        res.update(pairwise(labels, truth))
        res.update(identities=len(set(labels)), people=len(set(truth)), **extra)
        out.append(res)
    return out


def _crop_id_scores(labels: List[int], truth: List[int]) -> Dict[str, float]:
    """IDF1 / IDP / IDR with one frame per crop (every crop its own frame, one box each)."""
    n = len(labels)
    box = np.tile([0.0, 0.0, 10.0, 10.0], (n, 1))
    frames = np.arange(n, dtype=np.float64)
    return id_scores(np.column_stack([frames, truth, box]), np.column_stack([frames, labels, box]))


# --------------------------------------------------------------------------------------------
# Link time
# --------------------------------------------------------------------------------------------
def synthetic_tracklets(n: int, dim: int, spread: float, seed: int = 0):
    """``n`` tracklets of identities with 2-8 tracklets each: features a unit direction per
    identity plus Gaussian noise of ``spread`` per coordinate x sqrt(dim), cameras 1-8, starts
    over a day, spans 2-20 s."""
    from partreid.store.link import Tracklets

    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 9, n)
    pid = np.repeat(np.arange(n), sizes)[:n]
    centres = rng.normal(size=(int(pid.max()) + 1, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[pid] + (spread / np.sqrt(dim)) * rng.normal(size=(n, dim)).astype(np.float32)
    start = rng.uniform(0, 86400, n)
    cam = rng.integers(1, 9, n)
    return Tracklets(
        [f"{c}:{i}" for i, c in enumerate(cam)], cam, start, start + rng.uniform(2, 20, n), x
    ), pid


def run_timing(args) -> List[dict]:
    from partreid.store import link as link_mod

    out = []
    for n in args.sizes:
        t, pid = synthetic_tracklets(n, args.dim, args.spread)
        w0, c0 = time.time(), time.process_time()
        idx, _ = link_mod.knn_graph(t.features, link_mod.K)  # the graph alone, for its share
        w1, c1 = time.time(), time.process_time()
        result = link_mod.link(t)  # the whole: graph, threshold, clustering
        w2, c2 = time.time(), time.process_time()
        labels, thr = result.identity, result.threshold
        same = (pid[idx] == pid[:, None]).sum()
        want = np.minimum(np.bincount(pid)[pid] - 1, link_mod.K).sum()
        res = {
            "tracklets": n,
            "dim": args.dim,
            "knn_wall_s": round(w1 - w0, 2),
            "knn_cpu_s": round(c1 - c0, 2),
            "link_wall_s": round(w2 - w1, 2),
            "link_cpu_s": round(c2 - c1, 2),
            "knn_same_person_recall": round(float(same / max(want, 1)), 4),
            "threshold": round(thr, 4),
            "identities": int(len(set(labels.tolist()))),
            "people": int(len(set(pid.tolist()))),
            "load_avg_1min": round(os.getloadavg()[0], 1),
        }
        res.update({k: round(v, 4) for k, v in pairwise(labels.tolist(), pid.tolist()).items()})
        if args.store:
            res.update(_store_timing(t, args.store, n))
        out.append(res)
        print(json.dumps(res))
    return out


def _store_timing(t, folder: str, n: int) -> dict:
    """``partreid link``'s library call on an embedded store of the tracklets (one crop each):
    reading the tracklets, linking, writing the identities; and linking again (no change)."""
    import shutil

    from partreid.store import CropBatch, open_store
    from partreid.store.link import link_store

    uri = os.path.join(folder, f"link_timing_{n}")
    shutil.rmtree(uri, ignore_errors=True)
    with open_store(uri, create=True, info={"dim": t.features.shape[1], "model": {}}) as st:
        w = time.time()
        for a in range(0, n, 20000):
            b = min(n, a + 20000)
            st.add(
                CropBatch(
                    np.arange(a, b), t.features[a:b], t.camera[a:b], t.start[a:b], np.arange(a, b)
                )
            )
        add_s = time.time() - w
    out = {"store_add_s": round(add_s, 1)}
    for name in ("store_link", "store_relink"):
        with open_store(uri) as st:
            w, c = time.time(), time.process_time()
            rep = link_store(st)
            out[f"{name}_wall_s"] = round(time.time() - w, 2)
            out[f"{name}_cpu_s"] = round(time.process_time() - c, 2)
            out[f"{name}_changed"] = rep.changed
    shutil.rmtree(uri, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------
def _table(results: List[dict]) -> None:
    cols = [
        "store",
        "variant",
        "idf1",
        "idp",
        "idr",
        "pair_p",
        "pair_r",
        "pair_f1",
        "identities",
        "people",
        "threshold",
        "link_seconds",
    ]
    print(" | ".join(cols))
    for r in results:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(
                f"{v:.3f}"
                if isinstance(v, float) and c not in ("threshold", "link_seconds")
                else str(v)
            )
        print(" | ".join(cells))
    hows = {r["how"] for r in results if r.get("how")}
    for h in sorted(hows):
        print(f"threshold: {h}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("site", help="the synthetic site: ground-truth features and a model")
    s.add_argument("--demo", help="a `partreid demo --out DIR` folder (data/ and run/last.pth)")
    s.add_argument("--checkpoint", help="the model (default: DIR/run/last.pth)")
    s.add_argument("--out", default="runs/mtmc", help="where the site and the stores go")
    s.add_argument("--cameras", type=int, default=6)
    s.add_argument("--people", type=int, default=120)
    s.add_argument("--seconds", type=float, default=300.0)
    s.add_argument("--sweep", type=float, nargs="*", default=[0.2, 0.4, 0.6, 0.8])
    r = sub.add_parser("real", help="CUHK03-NP identities held out of a model's training")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--carve", type=int, default=100, help="identities held out (seed 0)")
    r.add_argument("--sweep", type=float, nargs="*", default=[0.2, 0.4, 0.6, 0.8])
    t = sub.add_parser("timing", help="link time on synthetic tracklet features")
    t.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    t.add_argument("--dim", type=int, default=256)
    t.add_argument("--spread", type=float, default=0.5)
    t.add_argument("--store", help="also time link_store on an embedded store made in this folder")
    for p in (s, r, t):
        p.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    results = {"site": run_site, "real": run_real, "timing": run_timing}[args.what](args)
    if args.what != "timing":
        _table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
