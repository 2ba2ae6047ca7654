"""The data side of `bench`: the tile pipeline's rate, the synthetic cohort build rate, and the
peak memory of one epoch over a memory-mapped cohort, measured in a fresh interpreter."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..cohort import CohortWriter, is_cohort, load_cohort, split_patients
from ..data.dataset import TileDataset, make_loader
from ..data.rna import fit_on_training
from ..paths import ROOT
from ..training.fastpath import FastPath
from .measure import GB, Settings


def random_cohort(out: Path, tiles: int, image_size: int, genes: int, patients: int = 200) -> Path:
    """A cohort of uniform random uint8 tiles and N(8, 2) RNA, written through `CohortWriter`:
    what the loader reads, in seconds (the synthetic renderer makes ~30 tiles/s)."""
    rng = np.random.default_rng(0)
    ids = [f"R{i:04d}" for i in range(patients)]
    owner = np.arange(tiles) * patients // tiles  # tile i -> patient, in blocks
    rna = pd.DataFrame(rng.normal(8, 2, (patients, genes)).astype(np.float32),
                       index=pd.Index(ids, name="patient_id"), columns=[f"G{j}" for j in range(genes)])
    with CohortWriter(out, image_size) as writer:
        for start in range(0, tiles, 1000):  # ~50 MB of tiles at a time at 128 px
            n = min(1000, tiles - start)
            writer.add_tiles(rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8))
        table = pd.DataFrame({"patient_id": [ids[k] for k in owner], "origin": "random",
                              "x": 0, "y": 0})
        return writer.commit(source="random", params={"tiles": tiles, "genes": genes}, rna=rna,
                             tiles_table=table, splits=split_patients(ids, 0))


def epoch_cohort(s: Settings) -> Path:
    """The epoch-memory cohort under `s.cache`, built on first use and kept."""
    out = s.cache / f"epoch-{s.epoch_tiles}-tiles-{s.epoch_image_size}px-{s.epoch_genes}-genes"
    if not is_cohort(out):
        random_cohort(out, s.epoch_tiles, s.epoch_image_size, s.epoch_genes)
    return out


def tile_loader(cohort_dir: Path, batch_size: int, augment: bool, fast: FastPath = FastPath()):
    """Every tile of a cohort, shuffled and (optionally) augmented, as training reads them:
    with `fast`'s workers and pinned memory (`fit`'s defaults: none on a CPU)."""
    cohort = load_cohort(cohort_dir)
    data = TileDataset(cohort, None, fit_on_training(cohort), augment="study" if augment else "none")
    return make_loader(data, batch_size, shuffle=True, seed=0, workers=fast.workers,
                       pin_memory=fast.pin_memory)


def pipeline_rate(cohort_dir: Path, batch_size: int, fast: FastPath = FastPath()) -> float:
    """Images/s of the augmented loader over one pass of a cohort whose pages are cached."""
    loader = tile_loader(cohort_dir, batch_size, augment=True, fast=fast)
    next(iter(loader))  # warm-up: first use of every transform
    started = time.perf_counter()
    n = sum(len(x) for x, _, _ in loader)
    return n / (time.perf_counter() - started)


def cohort_build_rate(patients: int, tiles_per_patient: int, image_size: int, genes: int) -> float:
    """Tiles/s of `build_synthetic`, RNA and writing included, into a temporary folder."""
    from ..cohort.synthetic import build_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        build_synthetic(Path(tmp) / "cohort", patients=patients, tiles_per_patient=tiles_per_patient,
                        image_size=image_size, genes=genes)
        return patients * tiles_per_patient / (time.perf_counter() - started)


def epoch_memory(cohort_dir: Path, batch_size: int, augment: bool) -> dict:
    """Peak RSS of one loader epoch over a cohort, measured in a fresh interpreter (`_epoch_child`)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "epoch.json"
        code = "import sys; from rna2histo.bench.pipeline import _epoch_child; _epoch_child(*sys.argv[1:])"
        args = [str(cohort_dir), str(batch_size), str(int(augment)), str(out)]
        cmd = [sys.executable, "-c", code, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"epoch-memory subprocess failed:\n{done.stderr[-2000:]}")
        return json.loads(out.read_text())


def _epoch_child(cohort_dir: str, batch_size: str, augment: str, out: str) -> None:
    """In a fresh interpreter: iterate one epoch; write to `out` how far the peak RSS rose (GB)
    above the RSS at its start, and the file-backed and anonymous RSS before and after.

    One intra-op thread: memory is the same, and per-tile ops on a busy CPU run many times
    faster without a second OpenMP thread to wait for.
    """
    torch.set_num_threads(1)
    loader = tile_loader(Path(cohort_dir), int(batch_size), augment=bool(int(augment)))
    # Linux: reset the peak to the current RSS, so that transients of loading the cohort (parquet,
    # normaliser fit) are not taken for the epoch's; elsewhere the earlier peak is the baseline.
    reset = _reset_peak_rss()
    status_before = _proc_status()
    before = status_before["VmRSS"] if reset else _peak_rss_gb()
    started = time.perf_counter()
    n = sum(len(x) for x, _, _ in loader)
    seconds = time.perf_counter() - started
    peak, status = _peak_rss_gb(), _proc_status()
    Path(out).write_text(json.dumps({
        "tiles": n, "seconds": seconds, "images_per_s": n / seconds, "rss_before_gb": before,
        "peak_rss_gb": peak, "increase_gb": peak - before,
        # file-backed pages (libraries; the memory-mapped tiles.npy, reclaimable) vs the heap
        "rss_file_before_gb": status_before.get("RssFile"), "rss_file_after_gb": status.get("RssFile"),
        "rss_anon_before_gb": status_before.get("RssAnon"), "rss_anon_after_gb": status.get("RssAnon"),
    }))


def _peak_rss_gb() -> float:
    """This process's peak RSS: VmHWM, which exec resets. Not ru_maxrss: Linux carries it over
    from the parent's size at fork, so a child of a big process would start at the parent's peak."""
    status = _proc_status()
    if "VmHWM" in status:
        return status["VmHWM"]
    return maxrss_gb(resource.RUSAGE_SELF)


def maxrss_gb(who: int) -> float:
    """`resource.getrusage(who).ru_maxrss` in GB: kB on Linux, bytes on macOS."""
    return resource.getrusage(who).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / GB


def _reset_peak_rss() -> bool:
    """Set this process's peak RSS (VmHWM) to its current RSS (Linux 4.0+); False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return "VmRSS" in _proc_status()


def _proc_status() -> dict[str, float]:
    """The kB fields of /proc/self/status, in GB (empty where there is no /proc)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in lines if line.endswith(" kB"))
    return {key: int(value.split()[0]) * 1024 / GB for key, value in fields}
