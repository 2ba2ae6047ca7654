"""Where things live: the repository root, data/ and runs/, independent of the working directory.

nbval runs a chapter in ``book/``, papermill in the caller's folder and the command line anywhere,
so every relative path a user gives is resolved against the repository root, never the cwd.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
RUNS = ROOT / "runs"
PARAMS = ROOT / "params"


def resolve(path: str | Path) -> Path:
    """An absolute path: absolute input as is, relative input against the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


def atomic_write(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto `path`: a kill leaves the old file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def cached(path: Path, load, fit, save, what: str):
    """`load(path)` when `path` holds a readable cache; else `fit()`, saved by ``save(value, tmp)``
    atomically. A damaged cache is fitted again, never trusted, and the terminal says so."""
    if path.exists():
        try:
            return load(path)
        except Exception as err:  # noqa: BLE001 - any damage means fit again
            print(f"{path}: unreadable cached {what} ({type(err).__name__}); retraining", flush=True)
    value = fit()
    atomic_write(path, lambda tmp: save(value, tmp))
    return value


def cohort_cache_key(root: Path, fields: dict) -> str:
    """The key of a cache fitted on the cohort at `root`: its manifest (a rebuilt cohort gets a new
    key) and `fields` (the recipe's version and settings)."""
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha1((Path(root) / "manifest.json").read_bytes() + text.encode()).hexdigest()[:12]


def source_version(exclude: tuple[str, ...] = ()) -> str:
    """A short hash of the package's source files (paths relative to the package, posix) but `exclude`
    (a file, or with a trailing "/" every file of a package)."""
    package = Path(__file__).resolve().parent
    packages = tuple(e for e in exclude if e.endswith("/"))
    digest = hashlib.sha1()
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative not in exclude and not relative.startswith(packages):
            digest.update(relative.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]
