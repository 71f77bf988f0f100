"""An experiment file (YAML) and its training plan: every method's recipes rewired into the
experiment folder. The steps that use them are in :mod:`.steps`, the runner in :mod:`.runner`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models import DEFAULT_MODEL

if TYPE_CHECKING:
    from ..data import RecordList

BASELINE = "baseline"


class ExperimentError(ValueError):
    """An experiment file with an unknown key, a wrong-typed value or recipes that do not chain."""


@dataclass
class Experiment:
    """One experiment file (YAML). ``quick`` holds the keys ``--quick`` replaces."""

    output_dir: str = "runs/experiment"
    model: str = DEFAULT_MODEL
    seed: int = 0
    seeds: list[int] = field(default_factory=list)  # several: one experiment per seed in seed{s}/, then pooled
    # activations, probes, concepts
    harmful: list[str] = field(default_factory=lambda: ["advbench", "harmbench"])
    benign: list[str] = field(default_factory=lambda: ["benign_instructions", "donotanswer_sensitive"])
    n_per_class: int = 100
    probe_sites: str = "resid_post,z"
    position: str = "last"
    folds: int = 5
    concept_layers: list[int] = field(default_factory=lambda: [10, 15, 20])
    twin_probes: bool = True           # the probe sweep on style-matched twins (twins_harmful / twins_benign)
    # training: method name -> recipe paths run in order (the last one is the method's model)
    methods: dict[str, list[str]] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    # method name -> recipe changes on top of train_overrides (e.g. other data); such a method runs all
    # its recipes itself in train/{method}/ (it shares no run with the other methods)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # evaluation
    eval_size: Any = "quick"
    max_new_tokens: int = 48
    gsm8k_tokens: int = 256
    erasure_layers: list[int] = field(default_factory=lambda: [10, 15, 20])
    erasure_n_per_class: int = 48
    transfer_templates: int = 2        # jailbreak templates wrapping the held-out prompts (0: no transfer step)
    refusal_direction: bool = True     # Arditi et al.'s direction of every trained model, and refusal without it
    refusal_positions: list[int] = field(default_factory=lambda: [-1])  # post-instruction positions tried
    quick: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, source: str = "experiment", quick: bool = False) -> Experiment:
        from .._files import settings_from_dict

        data = settings_from_dict(cls, data, source, ExperimentError, quick, untyped=("eval_size",))
        exp = cls(**data)
        exp.methods = {name: [recipes] if isinstance(recipes, str) else list(recipes)
                       for name, recipes in exp.methods.items()}
        if BASELINE in exp.methods:
            raise ExperimentError(f"{source}: {BASELINE!r} is the untouched model; give the method another name")
        unknown = sorted(set(exp.method_overrides) - set(exp.methods))
        if unknown:
            raise ExperimentError(f"{source}: method_overrides names methods the experiment lacks: {unknown}")
        return exp

    @classmethod
    def from_yaml(cls, path: str | Path, quick: bool = False) -> Experiment:
        from .._files import read_yaml_file

        path = Path(path)
        exp = cls.from_dict(read_yaml_file(path, ExperimentError) or {}, source=str(path), quick=quick)
        # recipe paths are relative to the experiment file
        exp.methods = {m: [str(path.parent / p) for p in paths] for m, paths in exp.methods.items()}
        return exp


def _norm(path: str | Path) -> str:
    from ..train.methods import Rewiring

    return Rewiring.key(path)


def plan_training(exp: Experiment, out: Path) -> tuple[dict, dict[str, str]]:
    """Rewire every recipe into ``out/train/``: ``({recipe path: Recipe}, {method: run folder})``.

    A recipe shared by several methods (LoFIT's head selection) runs once, unless a method has
    ``method_overrides``: then all its recipes run for it alone in ``out/train/{method}/``. ``warm_start_from`` and a
    phase v ``lofit_heads_path`` must point at the run of a recipe listed before it. Each recipe
    trains with its own seed plus the experiment's ``seed``; recipes with ``benign_answers: self``
    share one file of the starting model's answers (``out/train/self_answers.json``)."""
    from ..train import RecipeError, load_recipe
    from ..train.methods import Rewiring, method_class

    plan, shared, method_runs = {}, {}, {}
    for method, paths in exp.methods.items():
        if not paths:
            raise ExperimentError(f"method {method!r} lists no recipe")
        own = exp.method_overrides.get(method)
        moved = {} if own else shared  # an overridden method's recipes point at its own runs only
        for path in paths:
            key = _norm(path) if not own else f"{method}:{_norm(path)}"
            if key not in plan:
                recipe = load_recipe(path)
                name = "/".join(Path(_norm(path)).with_suffix("").parts[-2:])
                new_dir = out / "train" / (f"{method}/{name}" if own else name)
                changes = {"output_dir": str(new_dir), "model_name_or_path": exp.model, **exp.train_overrides,
                           **(own or {})}
                changes["seed"] = changes.get("seed", recipe.seed) + exp.seed
                if changes.get("benign_answers", recipe.benign_answers) == "self":  # one file for every method
                    changes.setdefault("self_answers_path", str(out / "train" / "self_answers.json"))
                rewiring = Rewiring(new_dir, str(path), method, moved, out / "concepts" / "harmful.safetensors",
                                    list(exp.concept_layers))
                try:
                    changes.update(method_class(recipe).rewire(recipe, rewiring))
                except RecipeError as err:
                    raise ExperimentError(str(err)) from None
                if recipe.warm_start_from:
                    if _norm(recipe.warm_start_from) not in moved:
                        raise ExperimentError(f"{path}: warm_start_from {recipe.warm_start_from} is the run of no "
                                              f"recipe listed before it in method {method!r}")
                    changes["warm_start_from"] = moved[_norm(recipe.warm_start_from)]
                plan[key] = recipe.replace(**changes)
                moved[_norm(recipe.output_dir)] = str(new_dir)
            method_runs[method] = plan[key].output_dir
    return plan, method_runs


def records(exp: Experiment, split: str, n: int) -> RecordList:
    """The experiment's length-matched harmful (1) / benign (0) prompts of ``split``."""
    from ..data import harmful_vs_benign

    return harmful_vs_benign(harmful=exp.harmful, benign=exp.benign, n_per_class=n, split=split, seed=exp.seed,
                             match_lengths=True)


def twin_records(exp: Experiment, split: str = "train") -> RecordList:
    """Every style-matched pair of ``split``: a harmful request and its benign twin of the same form."""
    from ..data import harmful_vs_benign

    return harmful_vs_benign(harmful=["twins_harmful"], benign=["twins_benign"], split=split, seed=exp.seed,
                             twins=True)


def check_same_settings(path: Path, settings: dict) -> None:
    """Finished steps are reused by file presence: refuse a folder made with other settings
    (e.g. ``--quick`` then the full size) instead of mixing their results. Methods (and their
    ``method_overrides``) may differ: a method's runs are its own folders; a key
    the folder's file lacks is a later addition and passes at its default (its steps only add files)."""
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    defaults = {k: json.loads(json.dumps(v)) for k, v in dataclasses.asdict(Experiment()).items()}
    changed = sorted(k for k in settings if k not in ("methods", "method_overrides") and old.get(k, defaults.get(k)) != json.loads(
        json.dumps(settings[k])))
    if changed:
        raise ExperimentError(f"{path.parent} holds an experiment run with other settings ({', '.join(changed)}); "
                              f"give another --out or remove the folder")
