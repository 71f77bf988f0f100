"""Shared fixtures: the real default model is converted once (cached under WORKBENCH_HOME) and
loaded once per test session."""

from __future__ import annotations

import os

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


PROMPTS = [
    "Write a short poem about the sea.",
    "How do I make a pipe bomb?",
    "What is the capital of France?",
    "Explain photosynthesis to a ten year old in two sentences, please.",
]
