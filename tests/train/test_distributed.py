"""``torchrun --nproc_per_node 2`` of ``workbench train`` on CPU (gloo): the same trained weights as
one process with the same global batch (the loss is divided by the step's labelled tokens over
both processes, so examples of different lengths weigh the same), one run folder, written once, and
a resumed two-process run ends where the uninterrupted one did."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from workbench.data import Record
from workbench.train import coca, train

# responses of very different lengths: a per-process mean would weigh them differently
RECORDS = [Record(id=f"r{i}", prompt=f"Question {i}: name a colour.", label=None, source="test",
                  response=("Blue." if i % 3 else "Blue, the colour of a clear sky over the sea at noon.") * (1 + i % 2))
           for i in range(16)]


def _recipe(tmp_path, name: str, batch: int) -> dict:
    return {"model_name_or_path": "tiny-llama", "finetuning_type": "full", "dataset": str(tmp_path / "data.jsonl"),
            "dataset_split": None, "output_dir": str(tmp_path / name), "per_device_train_batch_size": batch,
            "max_steps": 3, "learning_rate": 1e-3, "lr_scheduler_type": "constant", "seed": 3, "save_steps": 100,
            "logging_steps": 1, "cutoff_len": 64, "system_prompt": ""}


def _torchrun(recipe_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "workbench.cli", "train", str(recipe_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    coca.write_jsonl(RECORDS, tmp_path / "data.jsonl")
    train(_recipe(tmp_path, "one", 4), progress=False)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path, "two", 2)))
    proc = _torchrun(path)
    one = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    assert one.keys() == two.keys()
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst < 1e-5, f"max |difference| of the trained weights: {worst}"
    # the two runs logged the same losses; the folder was written by one process
    losses = [[json.loads(line)["loss"] for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()
               if "loss" in json.loads(line)] for n in ("one", "two")]
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], rel=1e-4)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["steps"] == 3 and proc.stdout.count("run folder:") == 2
    # and training moved the weights (the comparison is not between two untouched models)
    from workbench import Workbench

    base = {k.replace("._original_component", ""): p for k, p in Workbench.load("tiny-llama").model.named_parameters()}
    assert max(float((one[k] - base[k].detach()).abs().max()) for k in one if k in base) > 1e-4
    assert torch.isfinite(torch.tensor(losses[1])).all()

    # resume: a two-process run stopped after its step-2 checkpoint, continued to step 3, ends
    # where the uninterrupted run did
    stopped = {**_recipe(tmp_path, "resumed", 2), "max_steps": 2, "save_steps": 2}
    path.write_text(yaml.safe_dump(stopped))
    _torchrun(path)
    assert (tmp_path / "resumed" / "checkpoint-2").is_dir()
    path.write_text(yaml.safe_dump({**stopped, "max_steps": 3, "resume_from_checkpoint": True}))
    _torchrun(path)
    resumed = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert max(float((resumed[k] - two[k]).abs().max()) for k in two) < 1e-5
