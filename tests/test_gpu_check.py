"""benchmarks/gpu_check.py and benchmarks/train_throughput.py on the CPU with tiny settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_says_what_it_needs(capsys, tmp_path):
    gpu_check = load("gpu_check")
    assert gpu_check.main(["--sections", "c", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bounding_box_train" in err and "--weights" in err and "mobilenetv2" in err
    with pytest.raises(SystemExit):
        gpu_check.main(["--sections", "xyz"])


def test_throughput_table_in_process():
    tput = load("train_throughput")
    rows = tput.main(
        [
            "--models",
            "bot",
            "--backbone",
            "resnet18",
            "--height",
            "32",
            "--width",
            "16",
            "--batch",
            "2",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--inputs",
            "synthetic,device",
            "--combos",
            "fp32",
            "--device",
            "cpu",
            "--classes",
            "4",
        ]
    )
    assert [r["input"] for r in rows] == ["synthetic", "device"]
    for r in rows:
        assert r["img_s"] > 0 and r["mfu"] is None  # no peak known for the CPU
        assert r["gflop_img"] == rows[0]["gflop_img"] > 0.01  # ResNet-18 at 32x16, fwd + bwd
    assert tput.peak_tflops(None, True, 100.0) == 100.0


@pytest.mark.slow
def test_gpu_check_tiny_runs_every_section(tmp_path):
    gpu_check = load("gpu_check")
    out = tmp_path / "report.md"
    assert (
        gpu_check.main(["--tiny", "--device", "cpu", "--budget-s", "500", "--out", str(out)]) == 0
    )
    text = out.read_text()
    for head in ("## (a) CUDA tests", "## (b) training throughput", "## (c) short training"):
        assert head in text
    assert "| bot | synthetic | fp32 |" in text
    row = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("| bot |")
        and "failed" not in ln
        and "synthetic" not in ln
        and "device" not in ln
    )
    assert float(row.split("|")[3]) >= 0  # rank-1 % of the trained model
