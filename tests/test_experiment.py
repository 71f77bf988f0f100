"""The end-to-end experiment: planning (recipe rewiring, chain checks), config errors, a tiny
run on the random tiny model that resumes without redoing finished steps."""

import json
import logging
from pathlib import Path

import pytest
import yaml

from workbench.cli import default_experiment
from workbench.experiment import Experiment, ExperimentError, plan_training, run_experiment


def test_plan_rewires_recipes_into_the_experiment_folder(tmp_path):
    exp = Experiment.from_yaml(default_experiment())
    plan, runs = plan_training(exp, tmp_path)
    head = plan[next(k for k in plan if k.endswith("lofit/head.yaml"))]
    bias = plan[next(k for k in plan if k.endswith("lofit/bias_tuning.yaml"))]
    think = plan[next(k for k in plan if k.endswith("lofit/think_warm.yaml"))]
    tagged = plan[next(k for k in plan if k.endswith("lofit/tagged_warm.yaml"))]
    caft = plan[next(k for k in plan if k.endswith("caft/diffmeans.yaml"))]
    assert len(plan) == 21  # head selection and bias tuning are shared by lofit and both COCAs and run once
    assert head.lofit_heads_path == bias.lofit_heads_path == str(tmp_path / "train/lofit/head/heads.json")
    assert think.warm_start_from == tagged.warm_start_from == bias.output_dir == str(tmp_path / "train/lofit/bias_tuning")
    assert caft.caft_concepts == str(tmp_path / "concepts/harmful.safetensors")
    # full size: every method trains for the same number of steps, but the two with more records: one epoch
    one_epoch = ("coca_lora_self_512_wrapped_long:", "coca_lora_self_512_wrapped_long_enc:")
    assert all(r.output_dir.startswith(str(tmp_path)) and r.max_steps == 150 for k, r in plan.items() if not k.startswith(one_epoch))
    long_benign, encoded = (plan[next(k for k in plan if k.startswith(m))] for m in one_epoch)
    assert {(r.max_steps, r.num_train_epochs, r.long_benign, r.wrapped_harmful) for r in (long_benign, encoded)} == {(-1, 1.0, 90, 0.33)}
    assert (long_benign.encoded_harmful, encoded.encoded_harmful) == (0.0, 0.2)
    with_twins = ("sft_twins:", "coca_tagged_twins_lora:", "coca_lora_twins:", "coca_lora_self", "sft_self:")
    assert {r.dataset for k, r in plan.items() if not k.startswith(with_twins)} == {"advbench,harmbench,benign_instructions"}
    # COCA's data on LoRA: the sft recipe with a COCA variant, in its own folder
    lora_coca = {m: plan[next(k for k in plan if k.startswith(f"{m}:"))] for m in ("coca_lora", "coca_tagged_lora")}
    assert lora_coca["coca_lora"].coca_variant == "think" and lora_coca["coca_tagged_lora"].coca_variant == "tagged"
    assert {r.finetuning_type for r in lora_coca.values()} == {"lora"} and lora_coca["coca_tagged_lora"].cutoff_len == 192
    distinct = plan[next(k for k in plan if k.startswith("coca_lora_distinct:"))]
    assert (distinct.coca_variant, distinct.refusals, lora_coca["coca_lora"].refusals) == ("think", "distinct", "default")
    coca_twins = plan[next(k for k in plan if k.startswith("coca_lora_twins:"))]
    assert (coca_twins.coca_variant, coca_twins.dataset) == ("think", "advbench,harmbench,benign_instructions,twins_benign")
    weighted = plan[next(k for k in plan if k.startswith("coca_lora_weighted:"))]
    assert (weighted.answer_weight, weighted.answer_weight_tokens, lora_coca["coca_lora"].answer_weight) == (4.0, 8, 1.0)
    self_answered = {m: plan[next(k for k in plan if k.startswith(f"{m}:"))] for m in ("coca_lora_self", "sft_self")}
    assert [(r.benign_answers, r.coca_variant, r.dataset) for r in self_answered.values()] == [
        ("self", "think", coca_twins.dataset), ("self", None, coca_twins.dataset)]
    assert lora_coca["coca_lora"].benign_answers == "reference"
    long, slow, longest, wrapped = (plan[next(k for k in plan if k.startswith(f"coca_lora_self_{m}:"))]
                                    for m in ("long", "lr", "512", "512_wrapped"))
    assert (long.cutoff_len, long.learning_rate, slow.cutoff_len, slow.learning_rate) == (256, 2e-4, 128, 1e-4)
    assert {(r.benign_answers, r.coca_variant, r.dataset) for r in (long, slow, longest, wrapped)} == {
        ("self", "think", coca_twins.dataset)} and longest.cutoff_len == wrapped.cutoff_len == 512
    assert (wrapped.wrapped_harmful, longest.wrapped_harmful) == (0.33, 0.0)
    # the self-answered methods share one file of the untouched model's answers; the others have none
    assert {r.self_answers_path for r in plan.values() if r.benign_answers == "self"} == {
        str(tmp_path / "train/self_answers.json")}
    assert {r.self_answers_path for r in plan.values() if r.benign_answers != "self"} == {None}
    # method_overrides: sft_twins trains the same recipe on its own data in its own folder
    twins = plan[next(k for k in plan if k.startswith("sft_twins:"))]
    assert twins.dataset == coca_twins.dataset and twins.max_steps == 150
    assert twins.output_dir == str(tmp_path / "train/sft_twins/sft/lora")
    assert {r.seed for r in plan.values()} == {42}
    # another experiment seed trains every recipe with its own seed plus the experiment's
    exp.seed = 2
    assert {r.seed for r in plan_training(exp, tmp_path)[0].values()} == {44}
    exp.seed = 0
    assert runs == {"sft": str(tmp_path / "train/sft/lora"), "caft": str(tmp_path / "train/caft/diffmeans"),
                    "lofit": bias.output_dir, "coca": think.output_dir, "coca_tagged": tagged.output_dir,
                    "sft_twins": twins.output_dir, "coca_lora": str(tmp_path / "train/coca_lora/sft/lora"),
                    "coca_tagged_lora": str(tmp_path / "train/coca_tagged_lora/sft/lora"),
                    "coca_tagged_twins_lora": str(tmp_path / "train/coca_tagged_twins_lora/sft/lora"),
                    "coca_lora_distinct": str(tmp_path / "train/coca_lora_distinct/sft/lora"),
                    "coca_lora_twins": str(tmp_path / "train/coca_lora_twins/sft/lora"),
                    "coca_lora_weighted": str(tmp_path / "train/coca_lora_weighted/sft/lora"),
                    "coca_lora_self": str(tmp_path / "train/coca_lora_self/sft/lora"),
                    "sft_self": str(tmp_path / "train/sft_self/sft/lora"),
                    "coca_lora_self_long": str(tmp_path / "train/coca_lora_self_long/sft/lora"),
                    "coca_lora_self_lr": str(tmp_path / "train/coca_lora_self_lr/sft/lora"),
                    "coca_lora_self_512": str(tmp_path / "train/coca_lora_self_512/sft/lora"),
                    "coca_lora_self_512_wrapped": str(tmp_path / "train/coca_lora_self_512_wrapped/sft/lora"),
                    "coca_lora_self_512_wrapped_long": str(tmp_path / "train/coca_lora_self_512_wrapped_long/sft/lora"),
                    "coca_lora_self_512_wrapped_long_enc": str(tmp_path / "train/coca_lora_self_512_wrapped_long_enc/sft/lora")}
    # an overridden chained method runs its whole chain itself: its warm start and heads are its own
    exp.method_overrides = {"coca": {"learning_rate": 1e-4}}
    plan, runs = plan_training(exp, tmp_path)
    own = {Path(k).stem: r for k, r in plan.items() if k.startswith("coca:")}
    assert set(own) == {"head", "bias_tuning", "think_warm"}
    assert all(r.learning_rate == 1e-4 and r.output_dir.startswith(str(tmp_path / "train/coca/")) for r in own.values())
    assert own["think_warm"].warm_start_from == own["bias_tuning"].output_dir
    assert own["bias_tuning"].lofit_heads_path == str(tmp_path / "train/coca/lofit/head/heads.json")
    assert tagged.warm_start_from == bias.output_dir  # the other methods keep the shared runs
    assert plan[next(k for k in plan if k.endswith("lofit/tagged_warm.yaml"))].warm_start_from == str(tmp_path / "train/lofit/bias_tuning")
    with pytest.raises(ExperimentError, match="method_overrides names methods the experiment lacks"):
        Experiment.from_dict({"methods": {"sft": ["a.yaml"]}, "method_overrides": {"sfft": {}}})
    exp.method_overrides = {}
    quick = Experiment.from_yaml(default_experiment(), quick=True)
    assert quick.eval_size == "tiny" and quick.train_overrides["max_steps"] < exp.train_overrides["max_steps"]


def test_bad_experiment_files_are_clear_errors(tmp_path):
    with pytest.raises(ExperimentError, match="did you mean 'n_per_class'"):
        Experiment.from_dict({"n_per_clas": 3})
    with pytest.raises(ExperimentError, match="'n_per_class' should be a int"):
        Experiment.from_dict({"n_per_class": "many"})
    with pytest.raises(ExperimentError, match="unknown key 'max_step'"):
        Experiment.from_dict({"quick": {"max_step": 3}})
    recipes = Path(default_experiment()).parent
    exp = Experiment.from_dict({"methods": {"lofit": [str(recipes / "lofit/bias_tuning.yaml")]}})
    with pytest.raises(ExperimentError, match="list the phase A recipe first"):
        plan_training(exp, tmp_path)
    with pytest.raises(FileNotFoundError):
        run_experiment(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("methods: [unclosed")
    with pytest.raises(ExperimentError, match="not valid YAML"):
        Experiment.from_yaml(tmp_path / "bad.yaml")


def _tiny_experiment(tmp_path) -> Path:
    recipes = {
        "sft/lora.yaml": {"finetuning_type": "lora"},
        "caft/dm.yaml": {"finetuning_type": "caft", "caft_directions": "diffmeans", "caft_layers": [1]},
        "lofit/head.yaml": {"finetuning_type": "lofit", "lofit_component": "A", "lofit_topk_heads": 2,
                            "lofit_heads_path": "runs/heads.json", "output_dir": "runs/head"},
        "lofit/bias.yaml": {"finetuning_type": "lofit", "lofit_component": "v", "lofit_heads_path": "runs/heads.json",
                            "coca_variant": "tagged"},  # COCA's tagged template: adherence is reported
    }
    for name, r in recipes.items():
        path = tmp_path / "recipes" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({"model_name_or_path": "tiny-llama", "dataset": "advbench,benign_instructions",
                                        "output_dir": f"runs/{path.stem}", "cutoff_len": 64, **r}))
    exp = {"model": "tiny-llama", "n_per_class": 12, "probe_sites": "resid_post,z", "folds": 3,
           "concept_layers": [1], "erasure_layers": [0, 1], "erasure_n_per_class": 9,
           "methods": {"sft": ["sft/lora.yaml"], "caft": ["caft/dm.yaml"], "lofit": ["lofit/head.yaml", "lofit/bias.yaml"]},
           "train_overrides": {"max_steps": 2, "max_samples": 4, "per_device_train_batch_size": 2},
           "eval_size": 2, "max_new_tokens": 4, "gsm8k_tokens": 4}
    path = tmp_path / "recipes" / "exp.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def test_tiny_experiment_runs_end_to_end_and_resumes(tmp_path, caplog):
    path, out = _tiny_experiment(tmp_path), tmp_path / "out"
    report = run_experiment(path, out=out)
    assert report == out / "report.html"
    results = json.loads((out / "results.json").read_text())
    assert list(results["results"]) == ["baseline", "sft", "caft", "lofit"]
    for _name, r in results["results"].items():
        assert r["suites"]["id_harmful"]["n"] == 2 and 0 <= r["suites"]["mmlu"]["value"] <= 1
        assert [e["site"] for e in r["erasure"]] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
        assert all(0 <= e["accuracy_after"] <= 1 and e["n"] == 18 for e in r["erasure"])
    assert results["train"]["lofit"]["n_trainable"] == 2 * 16  # 2 heads x d_head 16 (tiny-llama)
    table = (out / "results.md").read_text()
    assert "| metric | baseline | sft | caft | lofit |" in table and "after LEACE, layer 1" in table
    assert "probe accuracy before / after LEACE" in report.read_text()
    assert "| substring | 1.000 |" in table  # the phrase judge never calls a compliance a refusal
    # the COCA run (tagged template) has its format adherence over every harmful / benign generation
    lofit = results["results"]["lofit"]["suites"]
    n_gen = sum(len(m["samples"]) for m in lofit.values() if m.get("kind") in ("refusal", "attack", "compliance",
                                                                                  "overrefusal"))
    assert lofit["coca_adherence"]["n"] == n_gen > 0 and 0 <= lofit["coca_adherence"]["value"] <= 1
    assert "| COCA format adherence (generations) | – | – | – | " in table
    # whether answers follow the decision is derived when any decision parses (a random model's rarely do)
    assert ("coca_followed" in lofit) == (lofit["coca_adherence"]["parsed"] > 0)
    assert set(results["judges"]) == {"default", "substring", "probe (layer 1)"}
    # probe transfer to jailbreak-wrapped prompts for every model, the refusal direction for trained ones
    for name, r in results["results"].items():
        assert [t["site"] for t in r["transfer"]["sites"]] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
        assert r["transfer"]["n_wrapped"] == 2 * r["transfer"]["n_plain"] == 36
        assert all(0 <= t["accuracy"] <= 1 and 0 <= t["harmful_recall"] <= 1 for t in r["transfer"]["sites"])
        assert ("refusal" in r) == (name != "baseline")
    for name in ("sft", "caft"):  # a random model may have no direction that passes: said so
        ref = results["results"][name]["refusal"]
        assert "error" in ref or (0 <= ref["refusal_ablated"]["value"] <= 1 and ref["layer"] < 2)
    # a COCA model opens with its reasoning: the first-token refusal score does not apply, recorded
    assert "first-token refusal score does not apply" in results["results"]["lofit"]["refusal"]["skipped"]
    assert "| refusal direction (layer, position) | – | " in table and table.count("not applicable") >= 1
    assert "probe transfer to jailbreak-wrapped prompts: accuracy, layer 1" in table
    # probe sweeps with their bag-of-words line, on the length-matched prompts and on the twins
    for folder in ("probes", "probes_twins"):
        lex = json.loads((out / folder / "lexical.json").read_text())
        assert 0 <= lex["accuracy"] <= 1 and "bag of words" in (out / folder / "probe_accuracy.html").read_text()
    assert "| style-matched twins |" in table and "losses.html" in {p.name for p in out.iterdir()}
    # paired tests: each generation suite x each of the 6 pairs of runs, on the same prompts
    gen_suites = [s for s, m in results["results"]["baseline"]["suites"].items() if m.get("samples")]
    assert len(results["paired"]) == 6 * len(gen_suites) > 0 and "Paired tests" in table
    row = results["paired"][0]
    a = results["results"][row["a"]]["suites"][row["suite"]]
    b = results["results"][row["b"]]["suites"][row["suite"]]
    assert row["diff"] == pytest.approx(a["value"] - b["value"]) and 0 <= row["p_value"] <= row["p_holm"] <= 1
    assert len(list((out / "probes").glob("*.html"))) == 2
    # a second run finds every step done: nothing is retrained or re-evaluated
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name in ("summary.json", "eval.json", "erasure.json", "judges.json")}
    assert len(stamps) == 4 + 4 + 4 + 1  # 4 trained recipes, 4 evaluated models, 4 erasure checks, judges
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="workbench"):
        run_experiment(path, out=out)
    assert "already done" in caplog.text
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    # the same folder with other settings would mix results: refused, nothing touched
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "eval_size": 3}, sort_keys=False))
    with pytest.raises(ExperimentError, match=r"other settings \(eval_size\)"):
        run_experiment(path, out=out)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_tiny_experiment_over_seeds_pools_results(tmp_path):
    """Two seeds, each in its own folder with its own training seed and test prompts; the results
    pooled (counts added, one interval) and the paired tests over both seeds' prompts."""
    path, out = _tiny_experiment(tmp_path), tmp_path / "out"
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "twin_probes": False, "transfer_templates": 0, "refusal_direction": False},
                                   sort_keys=False))
    run_experiment(path, out=out, methods=["sft"], seeds=[0, 1])
    results = json.loads((out / "results.json").read_text())
    per_seed = {s: {n: json.loads((out / f"seed{s}" / "eval" / n / "eval.json").read_text()) for n in ("baseline", "sft")}
                for s in (0, 1)}
    assert [json.loads((out / f"seed{s}" / "train/sft/lora/config.json").read_text())["recipe"]["seed"]
            for s in (0, 1)] == [42, 43]
    for name in ("baseline", "sft"):
        pooled = results["results"][name]["suites"]["id_harmful"]
        cells = [per_seed[s][name]["suites"]["id_harmful"] for s in (0, 1)]
        assert pooled["n"] == sum(c["n"] for c in cells) == 4
        assert pooled["value"] == pytest.approx(sum(c["value"] * c["n"] for c in cells) / 4)
        assert pooled["per_seed"] == [c["value"] for c in cells]
    row = next(r for r in results["paired"] if r["suite"] == "id_harmful")
    assert row["n_seeds"] == 2 and row["n"] == 4
    assert "Seeds 0, 1" in (out / "results.md").read_text()
