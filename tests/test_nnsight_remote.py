"""nnsight remote (NDIF) offline: a missing key, an unreachable service, a model NDIF does not host."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from workbench import Workbench
from workbench.backends.nnsight import RemoteUnavailable


@pytest.fixture
def ndif_config(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    monkeypatch.setattr(CONFIG.API, "HOST", "http://127.0.0.1:9")  # the discard port: refused
    return CONFIG


class Status(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"deployments": {"a": {"repo_id": "openai-community/gpt2", "application_state": "RUNNING"}}})
        self.send_response(200 if self.path == "/status" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())


def test_remote_errors_are_one_clear_line(ndif_config):
    with pytest.raises(RemoteUnavailable, match="needs an NDIF API key: set NDIF_API_KEY"):
        Workbench.load("meta-llama/Llama-3.1-8B", backend="nnsight", remote=True)
    ndif_config.API.APIKEY = "test-key"
    with pytest.raises(RemoteUnavailable, match=r"cannot reach NDIF at http://127\.0\.0\.1:9: Connect"):
        Workbench.load("meta-llama/Llama-3.1-8B", backend="nnsight", remote=True)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Status)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        ndif_config.API.HOST = f"http://127.0.0.1:{srv.server_address[1]}"
        with pytest.raises(RemoteUnavailable, match="'meta-llama/Llama-3.1-8B' is not hosted on NDIF now; hosted: "
                                                    "openai-community/gpt2"):
            Workbench.load("meta-llama/Llama-3.1-8B", backend="nnsight", remote=True)
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(ValueError, match="backend='nnsight'"):
        Workbench.load("meta-llama/Llama-3.1-8B", remote=True)
