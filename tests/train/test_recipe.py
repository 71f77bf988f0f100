"""Recipe validation: unknown keys, wrong types, inconsistent combinations; the shipped examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.train import Recipe, RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[2]
BASE = {"output_dir": "runs/x", "dataset": "advbench,benign_instructions"}


def test_misspelled_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("output_dir: runs/x\ndataset: advbench\nlearing_rate: 1.0e-4\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert "unknown key 'learing_rate'" in msg and "did you mean 'learning_rate'" in msg
    assert str(path) in msg and "Known keys:" in msg and "lofit_topk_heads" in msg


@pytest.mark.parametrize("key,value,expected", [
    ("lora_rank", "eight", "'lora_rank' must be int, got str 'eight'"),
    ("lora_rank", True, "'lora_rank' must be int, got bool"),
    ("learning_rate", "fast", "'learning_rate' must be float"),
    ("overwrite_output_dir", "yes", "'overwrite_output_dir' must be bool"),
    ("caft_layers", [1, "two"], "'caft_layers' must be list of int or null"),
    ("dataset", ["advbench"], "'dataset' must be str"),
])
def test_wrong_types_are_refused(key, value, expected):
    with pytest.raises(RecipeError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        Recipe.from_dict({**BASE, "finetuning_type": "caft", "caft_layers": [1], key: value})


def test_lenient_conversions():
    r = Recipe.from_dict({**BASE, "learning_rate": "1e-4", "num_train_epochs": 2,
                          "finetuning_type": "caft", "caft_layers": "10,15,20"})
    assert r.learning_rate == 1e-4 and isinstance(r.num_train_epochs, float)
    assert r.caft_layers == [10, 15, 20]
    assert Recipe.from_dict({**BASE, "resume_from_checkpoint": True}).resume_from_checkpoint is True


@pytest.mark.parametrize("changes,expected", [
    ({"finetuning_type": "lorra"}, "finetuning_type must be one of .*did you mean 'lora'"),
    ({"finetuning_type": "lofit"}, "needs lofit_component"),
    ({"finetuning_type": "lofit", "lofit_component": "B"}, "lofit_component must be one of"),
    ({"finetuning_type": "lofit", "lofit_component": "v"}, "needs lofit_heads_path"),
    ({"finetuning_type": "caft"}, "needs caft_layers"),
    ({"finetuning_type": "caft", "caft_layers": [1], "caft_n_directions": 3}, "one direction per layer"),
    ({"lofit_component": "A"}, "lofit_component is set but finetuning_type is 'lora'"),
    ({"caft_layers": [3]}, "caft_layers is set but finetuning_type"),
    ({"coca_variant": "think_warm"}, "warm start: set warm_start_from"),
    ({"coca_variant": "thinking"}, "coca_variant must be one of"),
    ({"lora_target": "q_proj,qkv"}, r"unknown module\(s\) \['qkv'\]"),
    ({"learning_rate": 0.0}, "learning_rate must be > 0"),
    ({"output_dir": ""}, "output_dir is required"),
])
def test_inconsistent_recipes_are_refused(changes, expected):
    with pytest.raises(RecipeError, match=expected):
        Recipe.from_dict({**BASE, **changes})


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="mapping"):
        Recipe.from_dict(["a"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def test_shipped_examples_validate():
    # the top-level files are experiments (safety.yaml, caft_*.yaml); recipes live in folders
    files = sorted(f for f in (ROOT / "examples").rglob("*.yaml") if f.parent != ROOT / "examples")
    names = {str(f.relative_to(ROOT / "examples")) for f in files}
    assert {"lofit/head.yaml", "lofit/bias_tuning.yaml", "lofit/normal.yaml", "lofit/normal_warm.yaml",
            "lofit/think_warm.yaml", "sft/lora.yaml", "caft/diffmeans.yaml", "caft/random.yaml"} <= names
    kinds = {}
    for f in files:
        r = load_recipe(f)
        kinds[str(f.relative_to(ROOT / "examples"))] = (r.finetuning_type, r.lofit_component, r.coca_variant)
        assert r.max_steps <= 60 and (r.max_samples or 0) <= 128  # sized for CPU
    assert kinds["lofit/head.yaml"][:2] == ("lofit", "A")
    assert kinds["lofit/think_warm.yaml"] == ("lofit", "v", "think_warm")
    assert kinds["lofit/tagged_warm.yaml"] == ("lofit", "v", "tagged_warm")
    assert kinds["caft/diffmeans.yaml"][0] == "caft"


def test_shipped_generalization_experiments_validate():
    from workbench.generalization import GeneralizationExperiment, is_generalization_file

    for name in ("caft_gender.yaml", "caft_double_mc.yaml"):
        path = ROOT / "examples" / name
        assert is_generalization_file(path) and not is_generalization_file(ROOT / "examples" / "safety.yaml")
        for quick in (False, True):
            exp = GeneralizationExperiment.from_yaml(path, quick=quick)
            assert "plain" in exp.methods and len(exp.seeds) >= (1 if quick else 3)
            for _method, over in exp.methods.items():   # every method's overrides are valid recipe keys
                load_recipe({**exp.recipe, **over, "output_dir": "o", "dataset": "x.jsonl",
                             **({"caft_concepts": "c.safetensors"} if str(over.get("caft_concepts", "")).startswith("@")
                                else {})})
