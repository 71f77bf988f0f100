"""CAFT's recipe keys on the tiny model: full fine-tuning base, PCA of fine-tuned minus base from a
reference run, preventative steering, mean ablation with a supplied or computed mean, diff of means
between two prompt sets at a named token, the empty system prompt, training in place said clearly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from workbench import Workbench
from workbench.data.tasks import gender_task
from workbench.interventions import Ablate, Compose, Intervention, Steer
from workbench.train import apply_run, caft, coca, train
from workbench.train.recipe import RecipeError

BASE = {"model_name_or_path": "tiny-llama", "cutoff_len": 96, "per_device_train_batch_size": 4, "save_steps": 100,
        "lr_scheduler_type": "constant", "seed": 3, "max_steps": 2, "learning_rate": 1e-3, "system_prompt": ""}
SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("task") / "train.jsonl"
    return str(coca.write_jsonl(gender_task("train", n=12, answer_format="pronoun"), path))


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("runs") / "plain"
    train({**BASE, "dataset": data, "output_dir": str(out), "finetuning_type": "full"}, progress=False)
    return out


def _cfg(run):
    return json.loads((run / "config.json").read_text())


def test_caft_on_full_fine_tuning_with_pca_of_the_difference(tmp_path, data, plain_run):
    out = tmp_path / "caft"
    res = train({**BASE, "dataset": data, "output_dir": str(out), "finetuning_type": "caft", "caft_base": "full",
                 "caft_layers": [0, 1], "caft_directions": "pca_diff", "caft_n_directions": 2,
                 "caft_reference_run": str(plain_run), "caft_position": "all"}, progress=False)
    cfg = _cfg(out)
    assert cfg["method"]["caft_base"] == "full" and cfg["method"]["caft_source"].startswith("pca_diff:")
    assert cfg["n_trainable"] > 0.9 * cfg["n_total"]          # every weight, not LoRA
    assert (out / "model" / "model.safetensors").is_file() and not (out / "adapter").exists()
    abl = Intervention.load(out / "caft_ablation")
    assert isinstance(abl, Ablate) and abl.sites == SITES and all(q.shape[1] == 2 for q in abl.Q.values())
    # the directions are the PCA of (reference - base): recompute independently
    from workbench.concepts import pca_diff

    base, ft = Workbench.load("tiny-llama", system_prompt=""), Workbench.load("tiny-llama", system_prompt="")
    apply_run(plain_run, ft)
    recs = gender_task("train", n=12, answer_format="pronoun")
    cs = pca_diff(ft, base, [r.prompt for r in recs], [r.response for r in recs], SITES, k=2, position="all")
    for s in SITES:
        a, b = abl.Q[s], torch.linalg.qr(cs.directions(s).T.double())[0].float()
        assert torch.allclose((a.T @ b).abs().sum(0), torch.ones(2), atol=1e-3)   # same span
    # mean projection on every ablated direction is logged
    proj = cfg["method"]["caft_mean_projection"]
    assert set(proj) == set(SITES) and all(len(v) == 2 for v in proj.values())
    # apply_run loads the full weights of a caft_base: full run
    wb = Workbench.load("tiny-llama", system_prompt="")
    apply_run(out, wb)
    trained = dict(res.wb.model.named_parameters())
    loaded = dict(wb.model.named_parameters())
    name = next(n for n in trained if "down_proj" in n and "layers.1." in n)
    assert torch.equal(trained[name], loaded[name]) and not torch.equal(loaded[name], dict(base.model.named_parameters())[name])


def test_preventative_steering_adds_the_direction_scaled_to_the_residual_norm(tmp_path, data):
    dirs = {s: torch.randn(1, 64, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(SITES)}
    path = tmp_path / "dirs.safetensors"
    save_file(dirs, str(path))
    out = tmp_path / "steer"
    res = train({**BASE, "dataset": data, "output_dir": str(out), "finetuning_type": "caft", "caft_concepts": str(path),
                 "caft_mode": "steer", "caft_steer_coef": 0.5}, progress=False)
    hooks = res.method.training_hooks()
    assert isinstance(hooks, Compose)
    steers = [h for h in hooks.items if isinstance(h, Steer)]
    assert len(steers) == 2
    norms = _cfg(out)["method"]["caft_resid_norm"]
    for st in steers:
        assert abs(float(st.direction.norm()) - 0.5 * norms[st.site_name]) < 1e-3 * norms[st.site_name]
        unit = dirs[st.site_name][0] / dirs[st.site_name][0].norm()
        assert abs(abs(float(st.direction @ unit)) - float(st.direction.norm())) < 1e-3
    assert (out / "caft_steer").is_dir() and len(res.deployed.items) == 0     # removed afterwards


def test_mean_ablation_uses_the_mean_over_all_positions_or_the_given_one(tmp_path, data):
    dirs = {s: torch.randn(2, 64, generator=torch.Generator().manual_seed(5)) for s in SITES}
    dpath = tmp_path / "dirs.safetensors"
    save_file(dirs, str(dpath))
    res = train({**BASE, "dataset": data, "output_dir": str(tmp_path / "m1"), "finetuning_type": "caft",
                 "caft_concepts": str(dpath), "caft_ablation": "mean"}, progress=False)
    wb = Workbench.load("tiny-llama", system_prompt="")
    recs = gender_task("train", n=12, answer_format="pronoun")
    acts = wb.capture([r.prompt for r in recs], SITES, position="all", responses=[r.response for r in recs],
                      progress=False)
    for s in SITES:
        assert torch.allclose(res.method.hooks.mean[s], acts[s].mean(0), atol=1e-4)
    given = {s: torch.full((64,), 0.25) for s in SITES}
    mpath = tmp_path / "mean.safetensors"
    save_file(given, str(mpath))
    res2 = train({**BASE, "dataset": data, "output_dir": str(tmp_path / "m2"), "finetuning_type": "caft",
                  "caft_concepts": str(dpath), "caft_ablation": "mean", "caft_mean": str(mpath)}, progress=False)
    assert all(torch.equal(res2.method.hooks.mean[s], given[s]) for s in SITES)


def test_shared_token_statistics_replace_the_capture_and_must_match_the_data(tmp_path, data):
    dirs = {s: torch.randn(1, 64, generator=torch.Generator().manual_seed(6)) for s in SITES}
    dpath = tmp_path / "dirs.safetensors"
    save_file(dirs, str(dpath))
    wb = Workbench.load("tiny-llama", system_prompt="")
    recs = coca.read_jsonl(data)
    stats = caft.save_token_statistics(wb, recs, SITES, tmp_path / "stats.safetensors", max_chars=4 * 96)
    run = {**BASE, "dataset": data, "finetuning_type": "caft", "caft_concepts": str(dpath), "caft_ablation": "mean"}
    own = train({**run, "output_dir": str(tmp_path / "own")}, progress=False)
    shared = train({**run, "output_dir": str(tmp_path / "shared"), "caft_stats": str(stats)}, progress=False)
    for s in SITES:
        assert torch.allclose(shared.method.hooks.mean[s], own.method.hooks.mean[s], atol=1e-5)
    assert _cfg(tmp_path / "shared")["method"]["caft_resid_norm"] == pytest.approx(
        _cfg(tmp_path / "own")["method"]["caft_resid_norm"], rel=1e-5)
    other = caft.save_token_statistics(wb, recs[:5], SITES, tmp_path / "other.safetensors", max_chars=4 * 96)
    with pytest.raises(ValueError, match="another model, system prompt or training data"):
        train({**run, "output_dir": str(tmp_path / "bad"), "caft_stats": str(other)}, progress=False)


def test_diffmeans_between_two_prompt_sets_at_a_named_token(tmp_path, data):
    doctors = [r for r in gender_task("train", n=40) if r.meta["profession"] == "doctor"]
    nurses = [r for r in gender_task("train", n=40) if r.meta["profession"] == "nurse"]
    a = coca.write_jsonl([r.__class__(**{**r.__dict__, "response": "x"}) for r in doctors], tmp_path / "a.jsonl")
    b = coca.write_jsonl([r.__class__(**{**r.__dict__, "response": "x"}) for r in nurses], tmp_path / "b.jsonl")
    res = train({**BASE, "dataset": data, "output_dir": str(tmp_path / "dm"), "finetuning_type": "caft",
                 "caft_layers": [1], "caft_directions": "diffmeans", "caft_contrast": f"{a},{b}",
                 "caft_position": "token:doctor|nurse"}, progress=False)
    wb = Workbench.load("tiny-llama", system_prompt="")
    xa = wb.capture([r.prompt for r in doctors], [SITES[1]], position="token:doctor|nurse", progress=False)[SITES[1]]
    xb = wb.capture([r.prompt for r in nurses], [SITES[1]], position="token:doctor|nurse", progress=False)[SITES[1]]
    want = xa.mean(0) - xb.mean(0)
    got = res.method.hooks.raw[SITES[1]][0]
    assert abs(float(torch.nn.functional.cosine_similarity(want, got, dim=0))) > 0.999


def test_token_position_reads_the_named_word(tiny):
    prompts = ["The nurse said hi.", "Yesterday the doctor left."]
    batch = tiny.tokenize(prompts)
    from workbench.sites import token_index

    idx = token_index(batch, "token:doctor|nurse")
    for i, j in enumerate(idx.tolist()):
        s, e = batch.offsets[i, j].tolist()
        assert batch.texts[i][s:e].strip() in ("nurse", "doctor") or batch.texts[i][s:e].strip() in "nurse doctor"
    with pytest.raises(ValueError, match="does not contain"):
        token_index(tiny.tokenize(["no such word"]), "token:doctor")
    with pytest.raises(ValueError, match="unknown position"):
        tiny.capture(prompts, [SITES[0]], position="token:")


def test_empty_system_prompt_and_in_place_training(tmp_path, data):
    wb = Workbench.load("tiny-llama", system_prompt="")
    text = wb.tokenize(["hi"]).texts[0]
    default = Workbench.load("tiny-llama").tokenize(["hi"]).texts[0]
    assert text.count("system") <= default.count("system")
    train({**BASE, "dataset": data, "output_dir": str(tmp_path / "a"), "finetuning_type": "lora"}, wb=wb, progress=False)
    assert wb.trained_by == tmp_path / "a"
    with pytest.raises(RecipeError, match="already changed in place"):
        train({**BASE, "dataset": data, "output_dir": str(tmp_path / "b"), "finetuning_type": "lora"}, wb=wb,
              progress=False)
    with pytest.raises(RecipeError, match="system_prompt"):
        train({**BASE, "dataset": data, "output_dir": str(tmp_path / "c"), "system_prompt": "Be brief."},
              wb=Workbench.load("tiny-llama", system_prompt=""), progress=False)


def test_recipe_errors_for_the_new_keys():
    from workbench.train import load_recipe

    with pytest.raises(RecipeError, match="caft_reference_run"):
        load_recipe({**BASE, "dataset": "x.jsonl", "output_dir": "o", "finetuning_type": "caft", "caft_layers": [0],
                     "caft_directions": "pca_diff"})
    with pytest.raises(RecipeError, match="caft_base"):
        load_recipe({**BASE, "dataset": "x.jsonl", "output_dir": "o", "finetuning_type": "caft", "caft_layers": [0],
                     "caft_base": "lofit"})
    with pytest.raises(RecipeError, match="caft_mode"):
        load_recipe({**BASE, "dataset": "x.jsonl", "output_dir": "o", "finetuning_type": "caft", "caft_layers": [0],
                     "caft_mode": "add"})
