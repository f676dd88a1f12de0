"""Extraction speed: ``partreid extract`` (the Extractor over a folder of JPEGs) against a bare
PyTorch forward of the same model on preloaded tensors, and against ONNX Runtime.

Usage:
    nice -n 10 python benchmarks/extract_speed.py                  # 512 CUHK03-NP JPEGs
    nice -n 10 python benchmarks/extract_speed.py --num 1024 --model bot --backbone resnet50 \\
        --height 256 --width 128 --threads 2
    python benchmarks/extract_speed.py --checkpoint runs/cgpn/last.pth

Images: the first --num files of ../shared/data/cuhk03np-detected/bounding_box_train (real
JPEGs) when present, else generated ones. The model: --checkpoint, or a --model/--backbone with
random weights (speed does not depend on the weights). Every figure is flip-averaged (two
forwards per image, as evaluation does). "bare" = the model (or the ONNX session) on tensors
already decoded, resized and normalised in memory: the ceiling that data loading should not
lower. Each figure is the best of --repeats interleaved runs (the machine is shared; timings are
noisy).
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data", "cuhk03np-detected", "bounding_box_train")


def _images(folder: str, num: int, tmp: str) -> str:
    """A folder with ``num`` JPEGs: links to the shared ones, or generated pedestrians."""
    out = os.path.join(tmp, "images")
    os.makedirs(out)
    if os.path.isdir(folder):
        names = sorted(n for n in os.listdir(folder) if n.endswith(".jpg"))[:num]
        for n in names:
            os.symlink(os.path.join(os.path.abspath(folder), n), os.path.join(out, n))
        print(f"images: {len(names)} real JPEGs from {os.path.abspath(folder)}")
        return out
    from partreid.data import generate_synthetic

    generate_synthetic(
        tmp + "/syn",
        num_ids=max(2, num // 8),
        test_fraction=0.0,
        num_cams=2,
        images_per_id_per_cam=4,
        height=128,
        width=64,
        seed=0,
    )
    src = os.path.join(tmp, "syn", "bounding_box_train")
    for n in sorted(os.listdir(src))[:num]:
        os.symlink(os.path.join(src, n), os.path.join(out, n))
    print(f"images: {len(os.listdir(out))} generated JPEGs ({folder} is absent)")
    return out


def _checkpoint(args, tmp: str) -> str:
    if args.checkpoint:
        return args.checkpoint
    from partreid.checkpoint import model_meta, save_checkpoint
    from partreid.config import load_config
    from partreid.models import build_model

    cfg = load_config(
        None,
        [
            f"model.name={args.model}",
            f"model.backbone={args.backbone}",
            "model.pretrained=false",
            f"input.height={args.height}",
            f"input.width={args.width}",
        ],
    )
    model = build_model(args.model, 100, **{k: v for k, v in cfg.model.items() if k != "name"})
    path = os.path.join(tmp, "model.pth")
    save_checkpoint(path, model.state_dict(), model_meta(cfg, model, 100))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", default=SHARED, help="folder of JPEGs")
    p.add_argument("--num", type=int, default=512)
    p.add_argument("--checkpoint")
    p.add_argument("--model", default="bot")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="extract's loader processes")
    p.add_argument("--threads", type=int, default=1, help="compute threads (torch and ORT)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-onnx", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from partreid.inference import Extractor

    with tempfile.TemporaryDirectory() as tmp:
        folder = _images(args.images, args.num, tmp)
        ckpt = _checkpoint(args, tmp)
        ext = Extractor(
            ckpt, device="cpu", batch_size=args.batch_size, num_workers=args.workers, progress=False
        )
        info = ext.info
        print(
            f"model: {info.name} ({info.model_cfg.get('backbone')}), input "
            f"{info.height}x{info.width}, batch {args.batch_size}, {args.threads} compute "
            f"thread(s), {args.workers} loader worker(s), flip-averaged, torch "
            f"{torch.__version__}, {os.cpu_count()} CPUs"
        )
        paths = sorted(os.path.join(folder, n) for n in os.listdir(folder))
        tensors = torch.stack(
            [ext.transform(__import__("PIL.Image").Image.open(q).convert("RGB")) for q in paths]
        )
        n = len(paths)
        ext.forward(tensors[: args.batch_size])  # warm-up

        def bare():
            for s in range(0, n, args.batch_size):
                ext.forward(tensors[s : s + args.batch_size])

        feats = {}

        def load_only():
            from partreid.data.sources import open_source
            from partreid.inference.stream import _loader

            for _ in _loader(ext, open_source(folder).dataset(ext.transform), False):
                pass

        def run_extract(e, key):
            feats[key] = e.extract(folder)

        runs = {"bare": bare, "extract": lambda: run_extract(ext, "torch"), "load": load_only}
        if not args.no_onnx:
            from partreid.deploy.export import export_onnx
            from partreid.inference import OnnxModel

            onnx_path = export_onnx(ext.model, os.path.join(tmp, "model.onnx"))
            sess = OnnxModel(onnx_path, "cpu", threads=args.threads)
            arr = tensors.numpy()
            sess.run(arr[: args.batch_size])
            oext = Extractor(
                onnx_path, batch_size=args.batch_size, num_workers=args.workers, progress=False
            )
            oext.onnx = sess

            def bare_onnx():
                for s in range(0, n, args.batch_size):
                    sess.run(arr[s : s + args.batch_size])

            runs["bare_onnx"] = bare_onnx
            runs["extract_onnx"] = lambda: run_extract(oext, "onnx")
        # interleaved repeats: a slow spell of the shared machine hits every method alike
        best = {k: float("inf") for k in runs}
        for _ in range(args.repeats):
            for k, fn in runs.items():
                t = time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - t)
        t_bare, t_ext = best["bare"], best["extract"]
        rows = [
            ("bare PyTorch forward, preloaded tensors", n / t_bare),
            (f"partreid extract (Extractor, {args.workers} workers)", n / t_ext),
            (f"data loading alone ({args.workers} workers, no model)", n / best["load"]),
        ]
        if not args.no_onnx:
            t_bo, t_oe = best["bare_onnx"], best["extract_onnx"]
            rows += [
                ("bare ONNX Runtime, preloaded tensors", n / t_bo),
                (f"partreid extract model.onnx ({args.workers} workers)", n / t_oe),
            ]
            diff = np.abs(feats["onnx"].features - feats["torch"].features).max()
        print(f"\n{n} images")
        for name, ips in rows:
            print(f"  {name:<48} {ips:8.1f} images/s")
        print(f"\n  extract / bare PyTorch            {t_bare / t_ext:.2f}")
        if not args.no_onnx:
            print(f"  extract .onnx / bare ORT          {t_bo / t_oe:.2f}")
            print(f"  bare ORT / bare PyTorch           {t_bare / t_bo:.2f}")
            print(f"  extract .onnx / extract .pth      {t_ext / t_oe:.2f}")
            print(f"  largest |ONNX - PyTorch| feature difference: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
