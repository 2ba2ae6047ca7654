"""The bench's arithmetic and plumbing; the bench itself is never a timed test.

FLOPs of known layers, the utilisation formula, the targets, the JSON of a run shrunk to seconds
(one model at 32 px, a 200-tile epoch) and the command line's one-line error.
"""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from rna2histo.bench import measure, report, suite, whole_book
from rna2histo.bench.measure import Settings


def test_flops_of_a_linear_layer():
    n, a, b = 8, 32, 16
    layer = nn.Linear(a, b)
    x = torch.randn(n, a, requires_grad=True)
    assert measure.count_flops(lambda: layer(x)) == 2 * n * a * b
    # backward: grad of the input and of the weight, one matmul each, as large as the forward
    assert measure.count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * n * a * b


def test_flops_of_a_strided_conv():
    n, c_in, c_out, k, size = 2, 3, 8, 4, 16
    conv = nn.Conv2d(c_in, c_out, k, stride=2, padding=1)  # 16 px -> 8 px, the DownStack block
    x = torch.randn(n, c_in, size, size)
    out = 8
    assert measure.count_flops(lambda: conv(x)) == 2 * n * c_out * out * out * c_in * k * k


def test_utilisation_formula():
    # 3 TFLOP per step in 1.5 s is 2 TFLOP/s: half of a 4 TFLOP/s reference
    assert measure.mfu(3e12, 1.5, 4e12) == pytest.approx(0.5)
    assert measure.mfu(1e9, 0.1, 1e11) == pytest.approx(0.1)


def test_targets_met_not_met_and_not_measured():
    results = {
        "models": {"cgan": {"small": {"mfu": 0.9}, "thesis": {"mfu": 0.31}},
                   "cvae": {"thesis": {"mfu": 0.29}}, "hybrid": {"thesis": {"mfu": None}}},
        "data_pipeline_ratio": 4.99,
        "epoch_peak_memory_gb": 1.5,
    }
    met = {row["target"].split(" thesis")[0]: row["met"] for row in suite.targets(results)}
    assert met == {
        "MFU cgan": True, "MFU cvae": False, "MFU hybrid": None,
        "data pipeline >= 5x the fastest model": False, "epoch peak memory <= 1.5 GB": True,
        "make book <= 30 min": None, "make book peak memory <= 3 GB": None,  # make bench-demo's
    }


def tiny_settings(cache):
    """Every measurement of a real run, shrunk to seconds: cvae at 32 px, 100 genes, batch 4."""
    return Settings(
        quick=True, models=("cvae",), shapes={"small": (32, 100), "thesis": (32, 100)},
        skip=("training/thesis",), batch_size=4, warmup_steps=0, min_steps=1, max_steps=2,
        budget_s=0.0, reference_size=64, reference_repeats=2, generation_batch=2, ddim_steps=2,
        pipeline_tiles=16, cohort=(3, 1, 32, 60), epoch_tiles=200, epoch_image_size=32,
        epoch_genes=20, cache=cache,
    )


def test_a_tiny_run_writes_every_key(tmp_path):
    results = suite.run("cpu", settings=tiny_settings(tmp_path / "cache"))
    path = suite.write_results(tmp_path / "bench.json", results)
    saved = json.loads(path.read_text())
    assert saved["device"] and saved["reference_flops_per_s"] > 0
    small = saved["models"]["cvae"]["small"]
    assert small["images_per_s"] > 0 and small["mfu"] > 0 and small["flops_per_step"] > 0
    skipped = {"images_per_s": None, "mfu": None, "skipped": "quick"}
    assert saved["models"]["cvae"]["thesis"] == skipped
    assert saved["generation_ms_per_image"]["cvae"] > 0
    assert saved["data_pipeline_ratio"] > 0 and saved["cohort_tiles_per_s"] > 0
    assert saved["epoch"]["tiles"] == 200 and saved["epoch_peak_memory_gb"] >= 0
    assert (tmp_path / "cache" / "epoch-200-tiles-32px-20-genes" / "manifest.json").exists()
    lines = report.format_report(saved).splitlines()
    assert lines[-3].strip().startswith("epoch peak memory <= 1.5 GB")
    assert lines[-2].strip().startswith("make book <= 30 min") and "`make bench-demo` measures it" in lines[-2]
    thesis = [line for line in lines if line.startswith("  MFU cvae thesis step")]
    assert len(thesis) == 1 and "not measured: --quick skips thesis steps on a CPU" in thesis[0]


def test_command_memory_counts_the_child_process():
    # 300 MB, every page touched (an untouched calloc'd block is not resident), held for 1 s
    hold = "import time; b = bytearray(300_000_000); b[::4096] = b'x' * len(b[::4096]); time.sleep(1)"
    result = whole_book.measure_command([sys.executable, "-c", hold], interval_s=0.1)
    assert result["returncode"] == 0 and result["wall_s"] >= 1
    assert result["peak_tree_rss_gb"] >= 0.3


def test_bad_device_is_one_line():
    cmd = [sys.executable, "-m", "rna2histo", "bench", "--device", "tpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: unknown device 'tpu'; expected one of cpu, cuda"]


def test_the_book_report_says_where_the_time_went(tmp_path):
    cells = [{"metadata": {"papermill": {"duration": d}}} for d in (1.5, None, 10.25)] + [{"metadata": {}}]
    (tmp_path / "01_cgan.ipynb").write_text(json.dumps({"cells": cells}))
    (tmp_path / "00_data.ipynb").write_text(json.dumps({"cells": cells[:1]}))
    seconds = whole_book.chapter_seconds(tmp_path)
    assert seconds == {"00_data": 1.5, "01_cgan": 11.8}  # in chapter order; cells never run count 0
    result = {"command": ["python", "-m", "rna2histo", "book"], "wall_s": 1900.0, "interval_s": 0.5,
              "peak_tree_pss_gb": 1.6, "peak_tree_rss_gb": 2.0, "largest_process_rss_gb": 1.8,
              "device": "a CPU", "started": "2026-12-02T09:00:00+00:00", "chapter_seconds": seconds,
              "targets": suite.book_targets(1900.0, 1.6)}
    lines = report.format_book_report(result).splitlines()
    assert "on a CPU; started 2026-12-02" in lines[0]
    assert lines[2].endswith("00_data 2 s, 01_cgan 12 s")
    assert lines[-2].strip().startswith("make book <= 30 min") and lines[-2].endswith("31.67 min  not met")
    assert lines[-1].strip().startswith("make book peak memory <= 3 GB") and lines[-1].endswith("1.60 GB  met")
