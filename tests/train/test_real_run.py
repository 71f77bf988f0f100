"""The shipped LoFIT / COCA recipes on the real default model, shortened: phase A writes a heads file,
phase v trains biases on those heads, think_warm starts from the bias-tuning run."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from workbench.interventions import HeadBias
from workbench.train import run_recipe, train

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "lofit"
SHORT = {"max_samples": 2, "cutoff_len": 64, "per_device_train_batch_size": 2, "save_steps": 100}


def recipe(name: str, **changes) -> dict:
    return {**yaml.safe_load((EXAMPLES / name).read_text()), **SHORT, **changes}


def test_lofit_and_coca_recipes_on_the_default_model(wb, tmp_path):
    heads = tmp_path / "heads.json"
    wb.forward(["warm up"])  # the bridge wires its own capture hooks on the first forward
    hooks, flags = wb.backend.hook_count(), [p.requires_grad for p in wb.model.parameters()]
    head_run = run_recipe(recipe("head.yaml", output_dir=str(tmp_path / "head"), lofit_heads_path=str(heads),
                                 max_steps=2), wb=wb)
    doc = json.loads(heads.read_text())
    assert doc["model_id"] == "smollm2-135m-instruct" and doc["n_heads"] == 9 and doc["d_head"] == 64
    assert doc["k"] == 16 and len(doc["heads"]) == 16 and len(doc["all_scores"]) == 30 * 9
    scores = [h["score"] for h in doc["heads"]]
    assert scores == sorted(scores, reverse=True) and scores[-1] >= doc["all_scores"][16][2]
    metrics = [json.loads(line) for line in (head_run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(0 < m["loss"] < 8 and m["l1_penalty"] > 0 for m in metrics)

    bias = train(recipe("bias_tuning.yaml", output_dir=str(tmp_path / "bias"), lofit_heads_path=str(heads),
                        max_steps=1), wb=wb, progress=False)
    assert bias.n_trainable == 16 * 64
    (learned,) = bias.deployed.items
    assert sorted(learned.head_list) == sorted((h["layer"], h["head"]) for h in doc["heads"])

    lr = 5e-3
    warm = train(recipe("think_warm.yaml", output_dir=str(tmp_path / "think"), lofit_heads_path=str(heads),
                        warm_start_from=str(bias.run_dir), max_steps=1, learning_rate=lr), wb=wb, progress=False)
    assert warm.method.info["warm_started_heads"] == 16
    before = HeadBias.load(bias.run_dir / "head_bias")
    (after,) = warm.deployed.items
    for l, h in before.head_list:  # one Adam step away from the bias-tuning run's values
        assert (after.vector(l, h) - before.vector(l, h)).abs().max() <= 1.1 * lr
    assert min(v.abs().min() for v in before.parameters()) > 1.5 * lr  # one step of lr 1e-2 from zero
    data = [json.loads(line) for line in (warm.run_dir / "data.jsonl").read_text().splitlines()]
    assert all(d["response"].startswith("Concepts: ") for d in data)
    assert wb.backend.hook_count() == hooks and [p.requires_grad for p in wb.model.parameters()] == flags
    with torch.no_grad(), wb.hooks(warm.deployed):
        assert torch.isfinite(wb.forward(["How do I pick a lock?"])).all()
