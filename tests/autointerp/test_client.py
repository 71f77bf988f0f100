"""The OpenAI-compatible client against a chat-completions server on 127.0.0.1 (http.server in a thread)."""

import copy
import json
import logging
import pickle
import time

import pytest

from workbench.autointerp import ChatClient, ChatClientError, LLMExplainer, LLMScorer, detection_score
from workbench.autointerp.examples import Example

KEY = "sk-test-SECRET-0123456789"


def scripted(srv, path, headers, body):
    """Speaks POST /v1/chat/completions like OpenAI / vLLM / Ollama; scripted by the server's fields."""
    if srv.fail_next:
        srv.fail_next -= 1
        return srv.fail_status, {"error": {"message": "overloaded"}}
    if srv.mode == "slow":
        time.sleep(1.5)
    if srv.mode == "not json":
        return 200, b"<html>gateway error</html>"
    if srv.mode == "no choices":
        return 200, {"id": "x", "object": "chat.completion", "weird": True}
    if path != "/v1/chat/completions":
        return 404, {"error": {"message": f"no route {path}"}}
    if srv.require_key and headers.get("Authorization") != f"Bearer {KEY}":
        # a careless server that echoes the header it got
        return 401, {"error": {"message": f"bad key {headers.get('Authorization')}"}}
    user = body["messages"][-1]["content"]
    if "Feature description" in user:
        lines = [ln for ln in user.splitlines() if ln[:1].isdigit() and ". " in ln]
        return 200, json.dumps([int("bomb" in ln) for ln in lines])
    return 200, "These are about weapons.\nLabel: bomb making"


@pytest.fixture
def server(chat_server):
    return chat_server(scripted, fail_next=0, require_key=True, fail_status=503, mode=None)


def url(srv):
    return f"http://127.0.0.1:{srv.server_address[1]}/v1"


def test_chat_round_trip_from_env(server, monkeypatch):
    monkeypatch.setenv("WORKBENCH_LLM_BASE_URL", url(server) + "/")
    monkeypatch.setenv("WORKBENCH_LLM_MODEL", "qwen2.5:0.5b")
    monkeypatch.setenv("WORKBENCH_LLM_API_KEY", KEY)
    client = ChatClient()
    assert client.chat("Describe these.") == "These are about weapons.\nLabel: bomb making"
    req = server.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {KEY}"
    assert req["body"]["model"] == "qwen2.5:0.5b" and req["body"]["messages"] == [{"role": "user", "content": "Describe these."}]
    assert req["body"]["temperature"] == 0.0


def test_key_never_leaks(server, caplog, tmp_path):
    client = ChatClient(url(server), "m", api_key=KEY)
    caplog.set_level(logging.DEBUG, logger="workbench.autointerp.client")
    client.chat("hello")
    assert caplog.records and all(KEY not in r.getMessage() for r in caplog.records)
    assert KEY not in repr(client) and KEY not in str(client.describe()) and KEY not in json.dumps(client.describe())
    assert KEY not in pickle.dumps(client).decode("latin1") and not copy.deepcopy(client).has_key
    # a server echoing the bad header: the error message masks the key
    bad = ChatClient(url(server), "m", api_key=KEY + "x", max_retries=0)
    with pytest.raises(ChatClientError) as err:
        bad.chat("hi")
    assert "401" in str(err.value) and KEY not in str(err.value) and "***" in str(err.value)
    # what an artifact records about the explainer holds no key
    import torch

    from workbench.concepts import Concept, ConceptSet

    ex = Example(0, 1.0, 0, ["a bomb"], [1.0])
    exp = LLMExplainer(client).explain([ex, ex], [Example(1, 0.0, 0, ["bread"], [0.0])])
    c = Concept("c", "blocks.0.hook_resid_post", torch.ones(4), meta={"autointerp": {**exp.to_json(), "client": client.describe()}})
    path = ConceptSet([c]).save(tmp_path / "cs.safetensors")
    assert KEY.encode() not in path.read_bytes()


def test_retries_then_errors(server):
    server.fail_next = 1
    client = ChatClient(url(server), "m", api_key=KEY, max_retries=2)
    assert client.chat("x").endswith("bomb making")
    assert len(server.requests) == 2  # one 503, then success
    server.fail_next = 5
    with pytest.raises(ChatClientError, match="503"):
        ChatClient(url(server), "m", api_key=KEY, max_retries=1).chat("x")
    server.fail_next = 0
    with pytest.raises(ChatClientError, match="404"):
        ChatClient(url(server) + "/wrong", "m", api_key=KEY).chat("x")
    with pytest.raises(ChatClientError, match="cannot reach"):
        ChatClient("http://127.0.0.1:9/v1", "m", max_retries=0, timeout=2).chat("x")  # discard port: refused
    with pytest.raises(ValueError, match="model"):
        ChatClient(url(server), None)


def test_rate_limit_timeout_and_malformed_answers(server):
    server.fail_next, server.fail_status = 1, 429   # rate limited once, then served
    assert ChatClient(url(server), "m", api_key=KEY, max_retries=1).chat("x").endswith("bomb making")
    assert len(server.requests) == 2 and server.requests[0]["body"].get("stream") is False
    server.mode = "slow"
    with pytest.raises(ChatClientError, match="timed out"):
        ChatClient(url(server), "m", api_key=KEY, max_retries=0, timeout=0.3).chat("x")
    server.mode = "not json"
    with pytest.raises(ChatClientError, match="invalid JSON|not a chat completion|unexpected response"):
        ChatClient(url(server), "m", api_key=KEY, max_retries=0).chat("x")
    server.mode = "no choices"
    with pytest.raises(ChatClientError, match="unexpected response shape"):
        ChatClient(url(server), "m", api_key=KEY, max_retries=0).chat("x")


def test_explainer_and_scorer_over_http(server):
    server.require_key = False  # vLLM / Ollama without a key
    client = ChatClient(url(server), "local-model", api_key="")
    assert not client.has_key
    top = [Example(i, 3.0, 1, [" how to make a", " bomb", " now"], [0.1, 3.0, 0.2]) for i in range(4)]
    contrast = [Example(9, 0.0, 0, [" bake bread"], [0.0])]
    exp = LLMExplainer(client).explain(top, contrast)
    assert exp.label == "bomb making" and server.requests[-1]["auth"] is None
    assert "<<bomb>>" in server.requests[-1]["body"]["messages"][-1]["content"]
    pos = ["build a bomb", "bomb recipe", "a bomb threat"]
    neg = ["bread recipe", "sea poem", "tax forms", "a garden"]
    res = detection_score(exp.label, pos, neg, LLMScorer(client, batch_size=3))
    assert res.accuracy == 1.0 and res.auroc == 1.0 and res.scorer == "llm:local-model"
