"""A loopback stand-in for the GDC API and the Xena hub, for tests (this is not a test file).

`FakeGDC` serves from memory on 127.0.0.1 in a daemon thread, with the real services' shapes:

- ``POST``/``GET /files``: search answers ``{"data": {"hits", "pagination"}, "warnings"}``
  with ``from``/``size`` paging; of the filters only ``cases.project.project_id`` is obeyed;
- ``/data/<file_id>`` and every path given to `add_file` or `set_matrix`: the bytes, with
  ``Range: bytes=N-`` answered 206 + ``Content-Range`` (416 past the end);
- knobs per path: `cut_first` (close the connection after N bytes, first request only),
  `fail_next` (answer a status, e.g. 500, the next k times), `serve_wrong_bytes` (flip a byte,
  so the md5 no longer matches), `ignore_range` (answer 200 with the whole file), and a log of
  every request (`count`, `requests_to`).

Use the `fake_gdc` fixture (import it into a test module) or ``with FakeGDC() as fake:``;
``fake.url`` is the API root to pass as ``api=``, ``fake.xena_url`` the matrix URL.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import socket
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import numpy as np
import pandas as pd
import pytest

XENA_PATH = "/download/TCGA.LUAD.sampleMap%2FHiSeqV2.gz"


class FakeGDC:
    """In-memory GDC files/data endpoints and a Xena download, on a loopback port."""

    def __init__(self, project: str = "TCGA-LUAD"):
        self.project = project
        self.files: dict[str, bytes] = {}  # raw request path -> body
        self.hits: list[dict] = []  # /files records, in insertion order
        self.log: list[dict] = []  # every request: method, path, headers (lower-case), body
        self._cut: dict[str, int] = {}
        self._fail: dict[str, list[int]] = {}
        self._wrong: set[str] = set()
        self._no_range: set[str] = set()
        self._stall: dict[str, tuple[int, float]] = {}
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeGDC:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        # a short poll interval: shutdown() waits for it, once per test
        serve = partial(self._server.serve_forever, poll_interval=0.02)
        threading.Thread(target=serve, daemon=True).start()
        return self

    def stop(self) -> None:
        self._released.set()  # a stalled handler must not hold the shutdown
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeGDC:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def xena_url(self) -> str:
        return self.url + XENA_PATH

    # -- content ---------------------------------------------------------------------------
    def add_file(self, path: str, data: bytes) -> str:
        """Serve `data` at `path` (with Range support); returns its URL."""
        self.files[path] = bytes(data)
        return self.url + path

    def add_slide(self, file_id: str, file_name: str, patient_id: str, data: bytes,
                  project: str | None = None, md5: str | None = None) -> dict:
        """List a slide under /files and serve it at /data/<file_id>; returns its record.

        `md5` overrides the advertised checksum (default: the true md5 of `data`).
        """
        record = {
            "id": file_id,
            "file_id": file_id,
            "file_name": file_name,
            "md5sum": md5 or hashlib.md5(data).hexdigest(),
            "file_size": len(data),
            "cases": [{"submitter_id": patient_id}],
            "_project": project or self.project,
        }
        self.hits.append(record)
        self.add_file(self.data_path(file_id), data)
        return {k: v for k, v in record.items() if not k.startswith("_")}

    def set_matrix(self, matrix: pd.DataFrame) -> str:
        """Serve a genes x samples matrix as Xena stores it (gzip TSV, header ``sample``)."""
        text = matrix.to_csv(sep="\t", index_label="sample")
        return self.set_matrix_bytes(gzip.compress(text.encode()))

    def set_matrix_bytes(self, raw: bytes) -> str:
        """Serve any bytes at the Xena matrix path (for malformed files); returns the URL."""
        return self.add_file(XENA_PATH, raw)

    @staticmethod
    def data_path(file_id: str) -> str:
        return f"/data/{file_id}"

    # -- knobs -----------------------------------------------------------------------------
    def cut_first(self, path: str, after: int) -> None:
        """The next request for `path` sends `after` body bytes, then the connection drops."""
        self._cut[path] = after

    def fail_next(self, path: str, status: int = 500, times: int = 1) -> None:
        """The next `times` requests for `path` get `status` and no body."""
        self._fail[path] = [status] * times

    def serve_wrong_bytes(self, path: str) -> None:
        """Serve `path` with its first byte flipped (same size, different checksum)."""
        self._wrong.add(path)

    def stall(self, path: str, after: int, seconds: float) -> None:
        """Requests for `path` send `after` body bytes, then wait `seconds` (or until `release`)
        before the rest: a transfer in progress, for killing the client mid-download."""
        self._released.clear()
        self._stall[path] = (after, seconds)

    def release(self) -> None:
        """End every stall now, and stall no more."""
        self._stall.clear()
        self._released.set()

    def ignore_range(self, path: str) -> None:
        """Answer 200 with the whole body even when a Range is asked (some servers do)."""
        self._no_range.add(path)

    # -- log -------------------------------------------------------------------------------
    def requests_to(self, path: str) -> list[dict]:
        """Every request for `path` (query string ignored), in order: method, headers, body."""
        with self._lock:
            return [r for r in self.log if r["path"].split("?")[0] == path]

    def count(self, path: str) -> int:
        return len(self.requests_to(path))

    # -- serving (called from the handler threads) -------------------------------------------
    def _record(self, method: str, path: str, headers, body: bytes) -> None:
        headers = {k.lower(): v for k, v in headers.items()}
        with self._lock:
            self.log.append({"method": method, "path": path, "headers": headers, "body": body})

    def _take(self, table: dict, path: str):
        with self._lock:
            value = table.get(path)
            if isinstance(value, list):
                if not value:
                    return None
                return value.pop(0)
            return table.pop(path, None)

    def _body(self, path: str) -> bytes:
        data = self.files[path]
        if path in self._wrong and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return data

    def _search(self, params: dict) -> dict:
        size = int(params.get("size", 10))
        start = int(params.get("from", 0))
        projects = _field_values(params.get("filters") or {}, "cases.project.project_id")
        hits = [h for h in self.hits if projects is None or h["_project"] in projects]
        page = [{k: v for k, v in h.items() if not k.startswith("_")}
                for h in hits[start:start + size]]
        pagination = {"count": len(page), "total": len(hits), "size": size, "from": start,
                      "sort": "", "page": start // max(size, 1) + 1,
                      "pages": -(-len(hits) // max(size, 1))}
        return {"data": {"hits": page, "pagination": pagination}, "warnings": {}}


def _field_values(filters, field: str):
    """The values a (nested) GDC filter gives `field`, or None if it does not mention it."""
    if isinstance(filters, str):
        filters = json.loads(filters)
    content = filters.get("content") if isinstance(filters, dict) else None
    if isinstance(content, list):
        found = [v for c in content if (v := _field_values(c, field)) is not None]
        return set().union(*found) if found else None
    if isinstance(content, dict) and content.get("field") == field:
        value = content.get("value")
        return set(value) if isinstance(value, list) else {value}
    return None


def _handler(fake: FakeGDC):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and Content-Length, like the real services

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def _route(self, method):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            fake._record(method, self.path, self.headers, body)
            path, _, query = self.path.partition("?")
            status = fake._take(fake._fail, path)
            if status:
                return self._send(status, b"")
            if path == "/files":
                params = json.loads(body) if body else {
                    k: v[0] for k, v in parse_qs(query).items()}
                answer = json.dumps(fake._search(params)).encode()
                return self._send(200, answer, {"Content-Type": "application/json"})
            if path in fake.files:
                return self._file(path)
            self._send(404, b'{"message": "not found"}', {"Content-Type": "application/json"})

        def _file(self, path):
            data = fake._body(path)
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            headers = {"Accept-Ranges": "bytes",
                       "Content-Disposition": f"attachment; filename={path.rsplit('/', 1)[-1]}"}
            if not match or path in fake._no_range:
                return self._send(200, data, headers, cut=fake._take(fake._cut, path),
                                  stall=fake._stall.get(path))
            first = int(match.group(1))
            last = min(int(match.group(2) or len(data) - 1), len(data) - 1)
            if first >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            self._send(206, data[first:last + 1], headers, cut=fake._take(fake._cut, path))

        def _send(self, status, body, headers=None, cut=None, stall=None):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if stall is not None:
                self.wfile.write(body[: stall[0]])
                self.wfile.flush()
                fake._released.wait(stall[1])
                body = body[stall[0]:]
            if cut is None:
                self.wfile.write(body)
                return
            self.wfile.write(body[:cut])  # then hang up mid-body, as a flaky network does
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    return Handler


@pytest.fixture
def fake_gdc():
    """A running `FakeGDC`, stopped after the test."""
    with FakeGDC() as fake:
        yield fake


def xena_matrix(genes: int = 5, samples=("TCGA-05-4244-01", "TCGA-05-4244-11"), seed: int = 0):
    """A small genes x samples matrix as on the Xena hub: log2(RSEM + 1)-like values."""
    values = np.random.default_rng(seed).uniform(0, 15, (genes, len(samples))).round(4)
    return pd.DataFrame(values, index=[f"G{i}" for i in range(genes)], columns=list(samples))

