"""Weights download through a loopback HTTP server standing in for the internet."""

import hashlib
import http.server
import threading
from functools import partial

import pytest

from rna2histo.errors import UserError
from rna2histo.nets import weights


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def publish(root, base, payload: bytes, claimed: str | None = None):
    prefix = claimed or hashlib.sha256(payload).hexdigest()[:8]
    name = f"net-{prefix}.pth"
    (root / name).write_bytes(payload)
    return weights.Weights("net", f"{base}/{name}", prefix, "a test")


def test_download_verifies_and_fills_the_hub_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    entry = publish(*server, b"weights of a network")
    monkeypatch.setitem(weights.WEIGHTS, "net", entry)
    assert not entry.present
    [path] = weights.download(["net"])
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / entry.url.rsplit("/", 1)[1]
    assert path.read_bytes() == b"weights of a network" and entry.present
    row = next(r for r in weights.status() if r["weights"] == "net")
    assert row["present"] is True


def test_a_corrupt_download_is_refused_and_not_kept(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    entry = publish(*server, b"tampered", claimed="00000000")
    monkeypatch.setitem(weights.WEIGHTS, "net", entry)
    with pytest.raises(UserError, match="could not download net"):
        weights.download(["net"])
    assert not entry.present


def test_unknown_weights_name():
    with pytest.raises(UserError, match="unknown weights 'vgg'"):
        weights.download(["vgg"])
