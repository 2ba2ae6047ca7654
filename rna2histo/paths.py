"""Where things live: the repository root, data/ and runs/, independent of the working directory.

nbval runs a chapter in ``book/``, papermill in the caller's folder and the command line anywhere,
so every relative path a user gives is resolved against the repository root, never the cwd.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
RUNS = ROOT / "runs"
PARAMS = ROOT / "params"


def resolve(path: str | Path) -> Path:
    """An absolute path: absolute input as is, relative input against the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path
