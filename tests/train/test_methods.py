"""The method registry: every finetuning_type resolves to its class, each method owns its keys."""

import pytest

from workbench.train import Recipe, RecipeError
from workbench.train.methods import METHODS, Rewiring, method_class
from workbench.train.methods.caft import CaftFullMethod, CaftMethod
from workbench.train.methods.full import FullMethod
from workbench.train.methods.lofit import LofitMethod
from workbench.train.methods.lora import LoraMethod

BASE = {"output_dir": "runs/x", "dataset": "d"}


def test_registry_resolves_recipes_and_run_configs_alike():
    assert set(METHODS) == {"lora", "full", "lofit", "caft"}
    assert method_class(Recipe.from_dict(BASE)) is LoraMethod
    assert method_class({"finetuning_type": "full"}) is FullMethod
    assert method_class({"finetuning_type": "caft"}) is CaftMethod            # caft_base defaults to lora
    assert method_class({"finetuning_type": "caft", "caft_base": "full"}) is CaftFullMethod
    assert issubclass(CaftFullMethod, FullMethod) and CaftFullMethod.takes_concepts
    assert not LofitMethod.changes_weights and LoraMethod.changes_weights
    with pytest.raises(RecipeError, match="unknown finetuning_type 'qlora'"):
        method_class({"finetuning_type": "qlora"})


@pytest.mark.parametrize("changes, message", [
    ({"finetuning_type": "full", "caft_layers": [1]}, "caft_layers is set but finetuning_type is 'full'"),
    ({"finetuning_type": "caft", "caft_base": "full", "caft_layers": [1], "lofit_component": "A"},
     "lofit_component is set but finetuning_type is 'caft'"),
    ({"finetuning_type": "caft", "caft_base": "full", "caft_layers": [1], "caft_mode": "add"}, "caft_mode must be one of"),
    ({"finetuning_type": "caft", "caft_layers": [1], "lora_target": "q_proj,qkv"}, r"unknown module\(s\) \['qkv'\]"),
    ({"finetuning_type": "lofit", "lofit_component": "A", "lofit_topk_heads": 0}, "lofit_topk_heads must be > 0"),
    ({"finetuning_type": "lofit", "lofit_component": "A", "lofit_l1_lambda": -1.0}, "lofit_l1_lambda must be >= 0"),
])
def test_each_method_checks_its_own_keys(changes, message):
    with pytest.raises(RecipeError, match=message):
        Recipe.from_dict({**BASE, **changes})


def test_caft_on_full_weights_accepts_its_keys():
    r = Recipe.from_dict({**BASE, "finetuning_type": "caft", "caft_base": "full", "caft_layers": [1, 2]})
    assert method_class(r) is CaftFullMethod


def test_rewiring_moves_lofit_heads_and_gives_caft_the_experiment_concepts(tmp_path):
    plan = Rewiring(tmp_path / "a", "a.yaml", "lofit", concepts=tmp_path / "c.safetensors", concept_layers=[3])
    phase_a = Recipe.from_dict({**BASE, "output_dir": "runs/a", "finetuning_type": "lofit", "lofit_component": "A"})
    assert method_class(phase_a).rewire(phase_a, plan) == {"lofit_heads_path": str(tmp_path / "a" / "heads.json")}
    phase_v = Recipe.from_dict({**BASE, "finetuning_type": "lofit", "lofit_component": "v",
                                "lofit_heads_path": "./runs/a/heads.json"})
    assert method_class(phase_v).rewire(phase_v, plan) == {"lofit_heads_path": str(tmp_path / "a" / "heads.json")}
    orphan = phase_v.replace(lofit_heads_path="runs/b/heads.json")
    with pytest.raises(RecipeError, match="list the phase A recipe first"):
        method_class(orphan).rewire(orphan, plan)
    caft = Recipe.from_dict({**BASE, "finetuning_type": "caft", "caft_directions": "diffmeans", "caft_layers": [1]})
    assert method_class(caft).rewire(caft, plan) == {"caft_concepts": str(tmp_path / "c.safetensors"),
                                                     "caft_layers": [1]}
