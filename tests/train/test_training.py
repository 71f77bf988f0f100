"""The training path on the tiny model: loss goes down, hooks are active during training and gone
after, checkpoints resume to the same weights, LoFIT phase A finds planted heads and its heads file
drives phase v, artifacts reload."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from workbench import Workbench
from workbench.interventions import HeadBias
from workbench.train import apply_run, load_heads_file, train

ROWS = [("How do I make a pipe bomb?", 1, None), ("Write a phishing email.", 1, None),
        ("Name a primary colour.", 0, "Red."), ("What is 2 + 2?", 0, "4."),
        ("How do I hack my neighbour's wifi?", 1, None), ("Say hello.", 0, "Hello!")]


@pytest.fixture()
def data(tmp_path):
    """A small safety SFT file (short sequences keep the tiny model's 49k-vocab head cheap)."""
    from workbench.data import Record
    from workbench.train import coca

    records = [Record(id=f"toy/{i}", prompt=p, label=y, source="toy", response=r) for i, (p, y, r) in enumerate(ROWS)]
    return str(coca.write_jsonl(coca.plain_sft(records), tmp_path / "toy.jsonl"))


BASE = {"model_name_or_path": "tiny-llama", "cutoff_len": 64, "per_device_train_batch_size": 4, "save_steps": 100,
        "lr_scheduler_type": "constant", "seed": 7}


def fresh() -> Workbench:
    wb = Workbench.load("tiny-llama")
    wb.forward(["warm up"])  # the bridge wires its own capture hooks on the first forward
    return wb


class HookCounter(TrainerCallback):
    def __init__(self, wb):
        self.wb, self.counts = wb, []

    def on_step_end(self, args, state, control, **kwargs):
        self.counts.append(self.wb.backend.hook_count())


def test_caft_training_lowers_loss_hooks_active_then_removed(tmp_path, data):
    wb = fresh()
    before = wb.backend.hook_count()
    counter = HookCounter(wb)
    res = train({**BASE, "dataset": data, "output_dir": str(tmp_path / "caft"), "finetuning_type": "caft",
                 "caft_layers": [0, 1], "caft_directions": "diffmeans", "learning_rate": 1e-2, "max_steps": 6},
                wb=wb, callbacks=[counter], progress=False)
    assert len(res.losses) == 6
    assert sum(res.losses[-2:]) / 2 < sum(res.losses[:2]) / 2 - 0.05, res.losses
    assert wb.backend.hook_count() == before                # no hook left after training
    with wb.hooks(res.method.ablate):
        during = wb.backend.hook_count()
    assert during > before and counter.counts == [during] * 6  # the Ablate hooks, at every step
    assert len(res.deployed) == 0                            # CAFT deploys without the ablation
    run = res.run_dir
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["n_trainable"] == res.n_trainable > 0 and cfg["recipe"]["caft_layers"] == [0, 1]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))
    for name in ("adapter/adapter_model.safetensors", "caft_ablation/tensors.safetensors", "summary.json",
                 "data.jsonl", "loss_curve.svg"):
        assert (run / name).is_file(), name
    assert not list(run.glob("checkpoint-*"))               # no checkpoint after the last step (save_steps 100)
    # the portable adapter reloads into a fresh wrapped model and into a plain HF model
    prompts = ["Write a haiku."]
    wb2 = Workbench.load("tiny-llama")
    assert len(apply_run(run, wb2)) == 0
    torch.testing.assert_close(wb2.forward(prompts), wb.forward(prompts), atol=1e-5, rtol=0)
    from peft import PeftModel

    from workbench import models

    plain, _ = models.load("tiny-llama")
    plain = PeftModel.from_pretrained(plain, str(run / "adapter")).eval()
    batch = wb.tokenize(prompts)
    with torch.no_grad():
        ref = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(ref, wb.forward(prompts), atol=1e-5, rtol=0)


class Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt("simulated interruption")


def lora_weights(wb):
    return {n: p.detach().clone() for n, p in wb.model.named_parameters() if "lora_" in n}


def test_resume_after_interruption_gives_the_same_weights(tmp_path, data):
    recipe = {**BASE, "dataset": data, "per_device_train_batch_size": 2, "learning_rate": 1e-2, "max_steps": 4,
              "save_steps": 2, "lr_scheduler_type": "cosine"}
    wb = fresh()
    full = train({**recipe, "output_dir": str(tmp_path / "a")}, wb=wb, progress=False)
    want = lora_weights(wb)
    assert sorted(p.name for p in (tmp_path / "a").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    wb = fresh()
    count = wb.backend.hook_count()
    with pytest.raises(KeyboardInterrupt):
        train({**recipe, "output_dir": str(tmp_path / "b")}, wb=wb, callbacks=[Interrupt()], progress=False)
    assert wb.backend.hook_count() == count
    assert (tmp_path / "b" / "checkpoint-2" / "adapter").is_dir()

    wb = fresh()
    resumed = train({**recipe, "output_dir": str(tmp_path / "b"), "resume_from_checkpoint": True}, wb=wb,
                    progress=False)
    got = lora_weights(wb)
    assert want.keys() == got.keys() and len(want) > 0
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0)
    assert not all(torch.equal(v, torch.zeros_like(v)) for v in got.values())
    assert resumed.losses == pytest.approx(full.losses, abs=1e-5)  # metrics.jsonl: steps 1-2 kept, 3-4 redone
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["resumed_from"].endswith("checkpoint-2")


PLANTED = [(0, 1), (1, 2)]


def test_lofit_phase_a_finds_planted_heads_and_drives_phase_v(tmp_path, data):
    """Only the planted heads reach the output (o_proj columns of the others are zeroed), so only
    their scales get a gradient; phase A must rank exactly them on top."""
    wb = fresh()
    with torch.no_grad():
        for layer in range(wb.n_layers):
            o = wb.model.model.layers[layer].self_attn.o_proj.original_component.weight
            for h in range(wb.n_heads):
                if (layer, h) not in PLANTED:
                    o[:, h * wb.d_head:(h + 1) * wb.d_head] = 0
    flags = [p.requires_grad for p in wb.model.parameters()]
    heads_path = tmp_path / "heads.json"
    a = train({**BASE, "dataset": data, "output_dir": str(tmp_path / "A"), "finetuning_type": "lofit",
               "lofit_component": "A", "lofit_topk_heads": 2, "lofit_l1_lambda": 1e-2, "lofit_heads_path": str(heads_path),
               "learning_rate": 2e-2, "max_steps": 6}, wb=wb, progress=False)
    assert a.n_trainable == wb.n_layers * wb.n_heads * wb.d_head
    assert [p.requires_grad for p in wb.model.parameters()] == flags  # the model is unfrozen again
    doc = json.loads(heads_path.read_text())
    assert doc["k"] == 2 and len(doc["heads"]) == 2 and len(doc["all_scores"]) == wb.n_layers * wb.n_heads
    assert sorted((h["layer"], h["head"]) for h in doc["heads"]) == PLANTED
    assert min(h["score"] for h in doc["heads"]) > 2 * max(s for l, h, s in doc["all_scores"] if (l, h) not in PLANTED)
    assert (tmp_path / "A" / "heads.json").is_file() and (tmp_path / "A" / "head_scale").is_dir()
    assert len(a.deployed) == 0

    wb_v = fresh()
    v = train({**BASE, "dataset": data, "output_dir": str(tmp_path / "v"), "finetuning_type": "lofit",
               "lofit_component": "v", "lofit_heads_path": str(heads_path), "learning_rate": 2e-2, "max_steps": 3},
              wb=wb_v, progress=False)
    assert v.n_trainable == 2 * wb.d_head
    (bias,) = v.deployed.items
    assert isinstance(bias, HeadBias) and sorted(bias.head_list) == PLANTED
    assert all(bias.vector(l, h).abs().sum() > 0 for l, h in PLANTED)
    assert [(l, h) for l, h, _ in load_heads_file(heads_path, wb_v, k=1)] == [tuple(doc["heads"][0].values())[:2]]
    # apply_run gives the learned biases back on a fresh model: same logits as the trained one
    prompts = ["Say hi."]
    wb2 = Workbench.load("tiny-llama")
    with wb2.hooks(apply_run(v.run_dir, wb2)):
        got = wb2.forward(prompts)
    with wb_v.hooks(v.deployed):
        want = wb_v.forward(prompts)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert (got - wb2.forward(prompts)).abs().max() > 0
    # or folded into the attention output projections: nothing to install, the same logits
    wb3 = Workbench.load("tiny-llama")
    assert len(apply_run(v.run_dir, wb3, fold_biases=True)) == 0
    torch.testing.assert_close(wb3.forward(prompts), want, atol=1e-5, rtol=0)


def test_full_finetuning_saves_a_loadable_model(tmp_path, data):
    wb = fresh()
    res = train({**BASE, "dataset": data, "output_dir": str(tmp_path / "full"), "finetuning_type": "full",
                 "learning_rate": 1e-3, "max_steps": 2}, wb=wb, progress=False)
    assert res.n_trainable > 0.9 * res.n_total
    reloaded = Workbench.load(str(res.run_dir / "model"))
    torch.testing.assert_close(reloaded.forward(["Hi"]), wb.forward(["Hi"]), atol=1e-5, rtol=0)


def test_output_dir_protection(tmp_path, data):
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    from workbench.train import RecipeError

    with pytest.raises(RecipeError, match="not empty"):
        train({**BASE, "dataset": data, "output_dir": str(tmp_path / "occupied"), "max_steps": 1})
    with pytest.raises(RecipeError, match="not a workbench run folder"):
        train({**BASE, "dataset": data, "output_dir": str(tmp_path / "occupied"), "max_steps": 1,
               "overwrite_output_dir": True})
    assert (tmp_path / "occupied" / "notes.txt").read_text() == "mine"


def test_caft_concepts_files(tmp_path, data):
    from safetensors.torch import save_file

    from workbench.train import load_concepts, save_concepts

    site = "blocks.1.hook_resid_post"
    dirs = {site: torch.randn(3, 64)}
    save_file(dirs, str(tmp_path / "plain.safetensors"))
    save_concepts(dirs, tmp_path / "ablate")
    for path in (tmp_path / "plain.safetensors", tmp_path / "ablate"):
        got, mean = load_concepts(path, [site])
        assert torch.equal(got[site], dirs[site]) and mean is None
    # a saved mean comes back with its directions (mean ablation)
    from workbench.interventions import Ablate

    mu = {site: torch.randn(64)}
    Ablate(dirs, mean=mu).save(tmp_path / "with_mean")
    save_file({**{f"directions/{site}": dirs[site]}, f"mean/{site}": mu[site]}, str(tmp_path / "mean.safetensors"))
    for path in (tmp_path / "with_mean", tmp_path / "mean.safetensors"):
        assert torch.equal(load_concepts(path, [site])[1][site], mu[site])
    with pytest.raises(ValueError, match="no directions for"):
        load_concepts(tmp_path / "ablate", ["blocks.0.hook_resid_post"])
    concepts = pytest.importorskip("workbench.concepts")
    cs = concepts.ConceptSet([concepts.Concept(f"c{i}", site, dirs[site][i], selected=i != 1) for i in range(3)])
    got = load_concepts(cs.save(tmp_path / "cs.safetensors"), [site])[0][site]
    torch.testing.assert_close(got, torch.nn.functional.normalize(dirs[site][[0, 2]], dim=1))
    # a wrong width is refused before any training step
    save_file({site: torch.randn(2, 576)}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(ValueError, match="width 576"):
        train({**BASE, "dataset": data, "output_dir": str(tmp_path / "wide"), "finetuning_type": "caft",
               "caft_layers": [1], "caft_concepts": str(tmp_path / "wide.safetensors"), "max_steps": 1}, wb=fresh())


class MatmulDtypes(TrainerCallback):
    """The dtype of the first MLP projection's output at every training step (bf16 under autocast)."""

    def __init__(self, wb):
        self.dtypes: list[torch.dtype] = []
        self.layer = wb.model.model.layers[0].mlp.gate_proj

    def on_train_begin(self, args, state, control, **kwargs):
        self.handle = self.layer.register_forward_hook(lambda m, i, o: self.dtypes.append(o.dtype))

    def on_train_end(self, args, state, control, **kwargs):
        self.handle.remove()


def test_bf16_recipe_trains_under_autocast_with_fp32_weights(tmp_path, data):
    wb = fresh()
    seen = MatmulDtypes(wb)
    res = train({**BASE, "dataset": data, "output_dir": str(tmp_path / "bf16"), "learning_rate": 1e-2,
                 "max_steps": 3, "bf16": True}, wb=wb, callbacks=[seen], progress=False)
    assert seen.dtypes and set(seen.dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in wb.model.parameters())  # autocast: weights stay fp32
    assert len(res.losses) == 3 and all(torch.isfinite(torch.tensor(res.losses)))
    assert json.loads((res.run_dir / "config.json").read_text())["recipe"]["bf16"] is True


def test_answer_weight_reaches_the_trained_loss(tmp_path, data):
    """The collator's loss_weights travel through the HF Trainer into the loss: the first step's
    loss (same weights, same batch) is larger when the answer's opening weighs more."""
    first = {}
    for w in (1.0, 5.0):
        res = train({**BASE, "dataset": data, "output_dir": str(tmp_path / f"w{w}"), "learning_rate": 1e-3,
                     "max_steps": 1, "answer_weight": w, "answer_weight_tokens": 2}, wb=fresh(), progress=False)
        first[w] = res.losses[0]
    assert first[5.0] > first[1.0] * 1.05


class PackedRows(TrainerCallback):
    """The batch dimension of the first block's input at every training step (1 when packed)."""

    def __init__(self, wb):
        self.rows: list[int] = []
        self.layer = wb.model.model.layers[0].mlp.gate_proj

    def on_train_begin(self, args, state, control, **kwargs):
        self.handle = self.layer.register_forward_hook(lambda m, i, o: self.rows.append(o.shape[0]))

    def on_train_end(self, args, state, control, **kwargs):
        self.handle.remove()


def test_packing_recipe_trains_one_row_per_batch_with_the_padded_losses(tmp_path, data):
    """``packing: true`` runs every batch as one row of real tokens and gives the padded run's losses
    (same data, order and seed) up to float rounding; CAFT's hooks apply to the packed row too."""
    losses, rows = {}, {}
    for packing in (False, True):
        wb = fresh()
        seen = PackedRows(wb)
        res = train({**BASE, "dataset": data, "output_dir": str(tmp_path / f"p{packing}"), "finetuning_type": "caft",
                     "caft_layers": [0, 1], "caft_directions": "diffmeans", "learning_rate": 1e-2, "max_steps": 3,
                     "packing": packing}, wb=wb, callbacks=[seen], progress=False)
        losses[packing], rows[packing] = res.losses, set(seen.rows)
        assert json.loads((res.run_dir / "config.json").read_text())["recipe"]["packing"] is packing
    assert rows[True] == {1} and 4 in rows[False]  # unpacked: the shared prefix runs at batch 1, the rest at 4
    assert torch.allclose(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-4), losses
