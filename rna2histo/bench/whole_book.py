"""`make bench-demo`: the wall time, peak memory of the process tree and seconds per chapter of
`make book`'s main job."""

from __future__ import annotations

import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..errors import UserError
from ..paths import PARAMS, ROOT
from .measure import GB, device_name
from .pipeline import maxrss_gb
from .suite import book_targets


def measure_command(cmd: list[str], interval_s: float = 0.5) -> dict:
    """Wall time and peak memory of a command and every process it starts, sampled every interval.

    Peak memory is the largest PSS sum over the process tree (pages shared between processes,
    such as torch's libraries in each notebook kernel, count once in all) and, as an upper bound,
    the RSS sum; plus the peak RSS of the largest single process as the kernel accounts it when
    children end (what ``/usr/bin/time -v`` reports; over this interpreter's whole life).
    """
    import psutil  # installed with ipykernel, which the book needs

    started, peak_pss, peak_rss = time.perf_counter(), 0.0, 0.0
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        root = psutil.Process(proc.pid)
        while True:
            pss, rss = _tree_memory(root, psutil)
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            try:
                proc.wait(timeout=interval_s)
                break
            except subprocess.TimeoutExpired:
                continue
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    largest = maxrss_gb(resource.RUSAGE_CHILDREN)
    return {"command": cmd, "returncode": proc.returncode, "wall_s": time.perf_counter() - started,
            "interval_s": interval_s,
            "peak_tree_pss_gb": peak_pss, "peak_tree_rss_gb": peak_rss,
            "largest_process_rss_gb": largest}


def _tree_memory(root, psutil) -> tuple[float, float]:
    """(PSS, RSS) summed over a process and its descendants, in GB; processes that end are skipped."""
    pss = rss = 0
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0.0
    for proc in tree:
        try:
            info = proc.memory_full_info()  # PSS: each shared page split among its sharers
            pss, rss = pss + getattr(info, "pss", info.rss), rss + info.rss
        except psutil.Error:
            continue
    return pss / GB, rss / GB


def measure_book(profile: str = "demo") -> dict:
    """`measure_command` over ``python -m rna2histo book --profile PROFILE``, against the targets."""
    if not (PARAMS / profile).is_dir():
        raise UserError(f"no profile {profile!r}: {PARAMS / profile} does not exist")
    from ..book.runner import BUILD

    cmd = [sys.executable, "-m", "rna2histo", "book", "--profile", profile]
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    result = measure_command(cmd)
    if result["returncode"] != 0:
        status = result["returncode"]
        raise UserError(f"`{' '.join(cmd[1:])}` failed (exit status {status}); nothing measured")
    result.update(device=device_name(torch.device("cpu")), cpu_count=os.cpu_count(), started=started,
                  commit=_commit(), chapter_seconds=chapter_seconds(BUILD / "executed" / "book"))
    result["targets"] = book_targets(result["wall_s"], result["peak_tree_pss_gb"])
    return result


def _commit() -> str | None:
    """The checkout's git commit (None outside a git checkout): what the measurement ran."""
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    except OSError:  # no git on this machine
        return None
    return found.stdout.strip() or None


def chapter_seconds(executed: Path) -> dict[str, float]:
    """Seconds per executed chapter: the sum of the cell durations papermill records."""
    out = {}
    for notebook in sorted(executed.glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        durations = (cell.get("metadata", {}).get("papermill", {}).get("duration") for cell in cells)
        out[notebook.stem] = round(sum(d for d in durations if d), 1)
    return out
