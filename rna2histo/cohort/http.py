"""Downloads that survive the real network: resume, retry, verify, then rename into place.

Every file the project fetches (the Xena matrix, GDC slides, pretrained weights) goes through
`download`. Bytes stream into ``<dest>.part``; an interrupted transfer resumes from what is on
disk with an HTTP ``Range`` request; connection errors, timeouts, 5xx answers and cut
connections are retried with exponential backoff; and only a file whose checksum and size match
is renamed onto `dest`. So `dest` either does not exist or is whole and verified, whatever
happens to the process or the network.

File names that come from an API are made safe with `safe_name` and `inside` before they touch
the disk: a server (or a man in the middle) must not be able to write outside the cache. For
the same reason the cache opens its ``.part`` files without following symbolic links and
refuses a ``.part`` or `dest` that is one: a link planted there would redirect the writes (or
the final rename) to any file the user can write.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import time
from functools import partial
from pathlib import Path

import requests
import urllib3

from ..errors import where

MAX_NAME = 200  # bytes; leaves room for ".part" under the usual 255-byte limit
TIMEOUT = 60  # seconds to connect, and between two reads of the body
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}  # answers worth asking again
# What a flaky network raises: requests wraps errors before the body, urllib3 those while
# streaming it (`raw.stream`), the socket layer the rest.
NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError,
                  TimeoutError)
# ...except those that no retry cures: a URL requests cannot use
BAD_URL = (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
           requests.exceptions.InvalidSchema)
LINK = "is a symbolic link; the cache will not write through it; remove it"
# Windows has no O_NOFOLLOW (links there need privileges); O_BINARY exists only there
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
BINARY = getattr(os, "O_BINARY", 0)


class _Retry(Exception):
    """A failure that another attempt may cure (network, 5xx, cut connection)."""


def download(
    url: str,
    dest: Path,
    md5: str | None = None,
    size: int | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    session=None,
    chunk: int = 1 << 16,  # bytes per read; a kill loses at most about one chunk of the transfer
    progress=None,
    sha256_prefix: str | None = None,
    timeout: float = TIMEOUT,
) -> Path:
    """Fetch `url` into `dest` and return `dest`; a `dest` that already verifies is kept as is.

    `md5` (hex), `sha256_prefix` (torch hub's convention) and `size` (bytes) are checked when
    given; a mismatch deletes the download and raises `UserError`. `progress(done, total)` is
    called as bytes arrive (`total` None when unknown). After `retries` failed retries the
    ``.part`` file stays, so the next call resumes it.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    _refuse_link(dest)  # before is_file(), which would follow it
    _refuse_link(part)
    if dest.is_file() and _problem(dest, md5, size, sha256_prefix) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    own = session is None
    session = session or requests.Session()
    try:
        fetch = partial(_fetch, session, url, part, size, chunk, progress, timeout)
        retrying(fetch, url, retries, backoff)
    finally:
        if own:
            session.close()
    _refuse_link(part)  # one planted during the transfer must not be renamed into the cache
    problem = _problem(part, md5, size, sha256_prefix)
    if problem:
        part.unlink(missing_ok=True)  # a corrupt file must not be resumed or used
        raise where(url, f"{dest.name}: {problem}; deleted the download, run again to fetch it anew")
    _refuse_link(dest)
    os.replace(part, dest)  # atomic: readers see no file or the whole verified one
    return dest


def _refuse_link(path: Path) -> None:
    """A UserError if `path` is a symbolic link (dangling or not); nothing if it is not."""
    if os.path.islink(path):
        raise where(path, LINK)


def retrying(attempt, url: str, retries: int = 5, backoff: float = 1.0):
    """Call `attempt()` until it returns, sleeping ``backoff * 2**k`` after the k-th failure.

    Failures that another try may cure (`_Retry`, network errors) are retried `retries` times;
    anything else (a 404, a `UserError`) propagates at once.
    """
    for k in range(retries + 1):
        try:
            return attempt()
        except BAD_URL as err:
            raise where(url, f"not a usable URL: {err}") from None
        except (_Retry, *NETWORK_ERRORS) as err:
            last = " ".join(str(err).split()) or type(err).__name__
            if k < retries:
                time.sleep(backoff * 2**k)
    raise where(url, f"failed after {retries + 1} attempts: {last}")


def get_json(session, url: str, payload: dict, retries: int = 5, backoff: float = 1.0,
             timeout: float = TIMEOUT) -> dict:
    """POST `payload` as JSON and return the decoded answer, retrying like `download`."""

    def attempt():
        resp = session.post(url, json=payload, timeout=timeout)
        _raise_for(resp, url)
        try:
            return resp.json()
        except ValueError:  # an HTML error page from a proxy, a truncated body
            raise where(url, f"answer is not JSON: {resp.text[:80]!r}") from None

    return retrying(attempt, url, retries, backoff)


def _fetch(session, url: str, part: Path, size, chunk: int, progress, timeout) -> None:
    """One attempt: append to `part` from where it ends; raise `_Retry` if the body was cut."""
    _refuse_link(part)  # stat() and exists() below follow links
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:  # longer than the file can be: start again
        part.unlink()
        have = 0
    if size is not None and have == size:  # whole already (a kill before the rename)
        return
    # identity: store the bytes as served, so checksums and byte offsets mean the same thing
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        if resp.status_code == 416:
            return _unsatisfiable(resp, part, have)
        _raise_for(resp, url)
        start = _resume_offset(resp, have)
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else size
        done = _stream(resp, part, start, chunk, progress, total)
    if total is not None and done < total:
        raise _Retry(f"connection cut after {done} of {total} bytes")


def _stream(resp, part: Path, start: int, chunk: int, progress, total) -> int:
    """Write the body to `part` from byte `start` (append or truncate); return bytes on disk."""
    done = start
    with _open_part(part, append=bool(start)) as f:
        # raw.stream, not iter_content: never undo a Content-Encoding the file was stored with
        for block in resp.raw.stream(chunk, decode_content=False):
            f.write(block)
            done += len(block)
            if progress:
                progress(done, total)
    return done


def _open_part(part: Path, append: bool):
    """`part` for writing, never through a link: appended to, or created anew (O_EXCL).

    The checks before are not enough on their own: a link planted between them and the open
    would be followed. O_NOFOLLOW refuses a link at the open itself, and O_CREAT | O_EXCL fails
    on any existing name, a link included.
    """
    flags = os.O_WRONLY | NOFOLLOW | BINARY
    if append:
        flags |= os.O_APPEND
    else:
        _refuse_link(part)
        part.unlink(missing_ok=True)  # an old partial file; unlink never follows a link
        flags |= os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(part, flags, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP or os.path.islink(part):
            raise where(part, LINK) from None
        raise where(part, f"cannot open for writing: {err.strerror or err}") from None
    return _refuse_hard_links(fd, part)


def _refuse_hard_links(fd: int, part: Path):
    """The open file, unless it has other names: a hard link writes through like a symlink."""
    if os.fstat(fd).st_nlink > 1:
        os.close(fd)
        raise where(part, "has other hard links; the cache will not write through it; remove it")
    return os.fdopen(fd, "wb")


def _resume_offset(resp, have: int) -> int:
    """Where the body starts in the file: `have` for a 206 that continues it, else 0."""
    if resp.status_code != 206:
        return 0  # 200: the server ignored Range and sends the whole file
    match = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != have:  # a range we did not ask for
        raise _Retry(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
    return have


def _unsatisfiable(resp, part: Path, have: int) -> None:
    """416: the part is already whole (keep it, verification follows) or too long (restart)."""
    match = re.match(r"bytes \*/(\d+)", resp.headers.get("Content-Range", ""))
    if match and int(match.group(1)) == have:
        return
    part.unlink(missing_ok=True)
    raise _Retry(f"range from byte {have} not satisfiable; starting again from scratch")


def _raise_for(resp, url: str) -> None:
    """5xx and throttling are worth a retry; other 4xx are a wrong URL or a refusal: stop."""
    if resp.status_code in RETRY_STATUS or resp.status_code >= 500:
        raise _Retry(f"HTTP {resp.status_code} {resp.reason}")
    if resp.status_code >= 400:
        raise where(url, f"HTTP {resp.status_code} {resp.reason}")


def _problem(path: Path, md5, size, sha256_prefix) -> str | None:
    """What is wrong with `path` against the expected size and checksums, or None."""
    actual = path.stat().st_size
    if size is not None and actual != int(size):
        return f"size mismatch: expected {int(size)} bytes, got {actual}"
    wanted = {"md5": md5, "sha256": sha256_prefix}
    wanted = {name: str(value).lower() for name, value in wanted.items() if value}
    if not wanted:
        return None
    got = _digests(path, wanted)
    for name, expected in wanted.items():
        # md5 must match whole; torch hub names carry only a sha256 prefix
        ok = got[name] == expected if name == "md5" else got[name].startswith(expected)
        if not ok:
            return f"{name} mismatch: expected {expected}, got {got[name]}"
    return None


def _digests(path: Path, names) -> dict:
    """Hex digests of the file, one pass for all of them."""
    hashes = {name: hashlib.new(name) for name in names}
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            for h in hashes.values():
                h.update(block)
    return {name: h.hexdigest() for name, h in hashes.items()}


def safe_name(name) -> str:
    r"""A file name from an API made safe: basename only, ``[A-Za-z0-9._-]``, no leading dot.

    ``../../etc/passwd`` -> ``passwd``, ``..\x.svs`` -> ``x.svs``. A name with
    nothing left becomes ``unnamed-<hash>`` (stable, so a cache still finds it). Long names
    keep their extension.
    """
    text = str(name)
    base = re.split(r"[\\/]", text)[-1]  # both separators: names may come from Windows
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)
    base = re.sub(r"\.{2,}", ".", base).lstrip(".")
    if not base:
        return "unnamed-" + hashlib.sha1(text.encode()).hexdigest()[:12]
    if len(base) > MAX_NAME:
        stem, dot, ext = base.rpartition(".")
        if not dot or len(ext) > 16:  # no extension worth keeping
            stem, ext = base, ""
        base = stem[: MAX_NAME - len(ext) - 1].rstrip(".") + (f".{ext}" if ext else "")
    return base


def inside(root: Path, name) -> Path:
    """``root / safe_name(name)``, checked to resolve inside `root` (a symlink could escape)."""
    root = Path(root)
    path = root / safe_name(name)
    if path.resolve().parent != root.resolve():
        raise where(path, f"resolves outside {root}; refusing to write there")
    return path
