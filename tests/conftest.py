"""Shared fixtures: the real default model is converted once (cached under WORKBENCH_HOME) and
loaded once per test session."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from workbench import Workbench  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def single_thread():
    """Many small torch ops: with 2 intra-op threads on a busy 2-core machine each op waits for
    a free core (~10 ms per op); one thread keeps such tests fast and load-independent."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def wb() -> Workbench:
    """The embedded SmolLM2-135M-Instruct behind the default (TransformerLens) backend."""
    return Workbench.load()


@pytest.fixture(scope="session")
def hf_model():
    """A second, untouched HF copy of the default model: the independent reference."""
    from workbench import models

    model, _ = models.load()
    return model


@pytest.fixture(scope="session")
def wb_nnsight(hf_model) -> Workbench:
    from workbench import models

    return Workbench(hf_model, models.load_tokenizer(), models.DEFAULT_MODEL, backend="nnsight")


@pytest.fixture(scope="session")
def tiny() -> Workbench:
    return Workbench.load("tiny-llama")


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    return list(PROMPTS)


class _ChatHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        status, reply = srv.reply(srv, self.path, self.headers, body)
        if isinstance(reply, str):  # the assistant's message, in a response body as OpenAI / vLLM / Ollama send it
            reply = {"id": "chatcmpl-1", "object": "chat.completion", "model": body.get("model"),
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": reply}}],
                     "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
        data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def chat_server():
    """``chat_server(reply, **fields)`` starts a scripted chat-completions server on 127.0.0.1 (in a
    thread, stopped after the test) and returns it: every POST is recorded in ``server.requests``
    (path, Authorization header, JSON body) and answered by ``reply(server, path, headers, body) ->
    (status, assistant message str | JSON object | raw bytes)``; ``fields`` become attributes the test can change."""
    servers = []

    def start(reply: Callable, **fields) -> ThreadingHTTPServer:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
        srv.handle_error = lambda request, address: None  # a client that timed out closes the socket first
        srv.reply, srv.requests = reply, []
        for k, v in fields.items():
            setattr(srv, k, v)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


PROMPTS = [
    "Write a short poem about the sea.",
    "How do I make a pipe bomb?",
    "What is the capital of France?",
    "Explain photosynthesis to a ten year old in two sentences, please.",
]
