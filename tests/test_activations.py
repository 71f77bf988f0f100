import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from workbench import ActivationStore
from workbench.activations import CorruptStore

SITES = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]


def _prompts(n):
    return [f"Question number {i}: what is {i} plus {i % 7}?" + " Please." * (i % 3) for i in range(n)]


def test_store_equals_in_memory_capture(tiny, tmp_path):
    prompts, labels = _prompts(21), [i % 2 for i in range(21)]
    store = ActivationStore.build(tmp_path / "s", tiny, prompts, SITES, labels=labels, batch_size=4,
                                  shard_size=8, progress=False)
    ref = tiny.capture(prompts, SITES, batch_size=4, progress=False)
    assert len(store.manifest["shards"]) == 3 and store.complete and len(store) == 21
    for s in SITES:
        assert torch.equal(store.load(s), ref[s])
    assert store.labels.tolist() == labels
    assert [t.shape[0] for t in store.iter_shards(SITES[0])] == [8, 8, 5]
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["model_id"] == "tiny-llama" and m["sites"] == SITES and len(m["dataset_fingerprint"]) == 64


def test_ragged_positions_keep_record_index(tiny, tmp_path):
    prompts = _prompts(6)
    store = ActivationStore.build(tmp_path / "s", tiny, prompts, SITES[:1], position="all", batch_size=4,
                                  shard_size=4, progress=False)
    lengths = tiny.tokenize(prompts).attention_mask.sum(1)
    assert torch.equal(torch.bincount(store.record_index), lengths)
    assert store.load(SITES[0]).shape == (int(lengths.sum()), 64)


_KILLED_RUN = """
import sys, time, torch
from workbench import ActivationStore, Workbench
wb = Workbench.load("tiny-llama")
prompts = [f"Question number {i}: what is {i} plus {i % 7}?" + " Please." * (i % 3) for i in range(160)]
slow = lambda t, s: time.sleep(0.05)
with wb.hooks({"blocks.0.hook_resid_pre": slow}):
    ActivationStore.build(sys.argv[1], wb, prompts, SITES, labels=[i % 2 for i in range(160)],
                          batch_size=4, shard_size=8, progress=False)
""".replace("SITES", repr(SITES))


def test_kill_and_resume_matches_uninterrupted_run(tiny, tmp_path):
    folder = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(folder)])
    manifest = folder / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = json.loads(manifest.read_text())
    assert not partial["complete"] and 3 <= len(partial["shards"]) < 20, "the run was not killed midway"

    prompts, labels = _prompts(160), [i % 2 for i in range(160)]
    resumed = ActivationStore.build(folder, tiny, prompts, SITES, labels=labels, batch_size=4, shard_size=8,
                                    progress=False)
    clean = ActivationStore.build(tmp_path / "clean", tiny, prompts, SITES, labels=labels, batch_size=4,
                                  shard_size=8, progress=False)
    assert torch.equal(resumed.record_index, torch.arange(160))  # nothing duplicated or lost
    for s in SITES:
        assert torch.equal(resumed.load(s), clean.load(s))
    assert sorted(f.name for f in folder.iterdir()) == sorted(f.name for f in (tmp_path / "clean").iterdir())


def test_corrupted_and_truncated_shards_are_detected(tiny, tmp_path):
    ActivationStore.build(tmp_path / "s", tiny, _prompts(8), SITES, batch_size=4, shard_size=4, progress=False)
    shard = tmp_path / "s" / "shard_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptStore, match="shard_00001.*sha256"):
        ActivationStore(tmp_path / "s")
    shard.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CorruptStore, match="truncated"):
        ActivationStore(tmp_path / "s")
    os.remove(shard)
    with pytest.raises(CorruptStore, match="missing"):
        ActivationStore(tmp_path / "s")


def test_bad_inputs_lose_nothing(tiny, tmp_path):
    folder = tmp_path / "s"
    ActivationStore.build(folder, tiny, _prompts(4), SITES, batch_size=4, progress=False)
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(ValueError, match="different capture.*sites"):
        ActivationStore.build(folder, tiny, _prompts(4), SITES[:1], batch_size=4, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == before
    with pytest.raises(ValueError, match="empty"):
        ActivationStore.build(tmp_path / "e", tiny, [], SITES)
    with pytest.raises(KeyError, match="Closest"):
        ActivationStore.build(tmp_path / "b", tiny, _prompts(2), ["blocks.0.hook_resid_pots"])
    assert not (tmp_path / "b").exists()
    with pytest.raises(FileNotFoundError):
        ActivationStore(tmp_path / "nothing")


def test_store_on_real_model(wb, tmp_path, prompts):
    labels = [0, 1, 0, 0]
    store = ActivationStore.build(tmp_path / "real", wb, prompts, ["blocks.15.hook_resid_post"], labels=labels,
                                  position="post_instruction_mean", batch_size=2, shard_size=2, progress=False)
    ref = wb.capture(prompts, ["blocks.15.hook_resid_post"], position="post_instruction_mean", batch_size=2,
                     progress=False)
    assert torch.equal(store.load("blocks.15.hook_resid_post"), ref["blocks.15.hook_resid_post"])
    assert store.manifest["model_id"] == "smollm2-135m-instruct"
