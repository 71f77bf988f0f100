"""The registry of fine-tuning methods: ``finetuning_type`` -> :class:`~.base.Method` class.

Each method owns how it trains, which recipe keys it reads (:meth:`Method.validate`), how a
finished run is applied (:meth:`Method.apply`) and how an experiment rewires it
(:meth:`Method.rewire`); nothing outside this package switches on ``finetuning_type``.

* ``lora``  peft LoRA on the attention / MLP projections (:mod:`.lora`);
* ``full``  every weight (:mod:`.full`);
* ``lofit`` per-head ``HeadScale`` (phase A) or ``HeadBias`` (phase v) on ``attn.hook_z``, model
  frozen (:mod:`.lofit`);
* ``caft``  LoRA or full fine-tuning with ``Ablate`` (or ``Steer``) on the residual stream during
  training only (:mod:`.caft`).

A new method: subclass :class:`Method` in a module here and add it to :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ...interventions import Compose
from ..errors import RecipeError
from ..run_folder import RunFolder
from .base import Method, Need, RecipeLike, Rewiring, count_parameters, freeze, recipe_get, unfreeze
from .caft import CaftMethod
from .full import MODEL_DIR, FullMethod, load_full_weights, save_full_weights
from .lofit import LofitMethod, load_heads_file, save_heads_file
from .lora import ADAPTER_DIR, LORA_MODULES, LoraMethod, inject_lora, load_adapter, save_adapter

if TYPE_CHECKING:
    from ...data import Record
    from ...model import Workbench
    from ..recipe import Recipe

METHODS: dict[str, type[Method]] = {m.name: m for m in (LoraMethod, FullMethod, LofitMethod, CaftMethod)}


def method_class(recipe: RecipeLike) -> type[Method]:
    """The class that trains ``recipe`` (a Recipe or a run config's recipe mapping)."""
    name = recipe_get(recipe, "finetuning_type", "lora")
    if name not in METHODS:
        raise RecipeError(f"unknown finetuning_type {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name].resolve(recipe)


def make_method(wb: Workbench, recipe: Recipe, records: Sequence[Record]) -> Method:
    return method_class(recipe)(wb, recipe, records)


def validate(recipe: Recipe, need: Need) -> None:
    """The method's own checks, and that no key of another method is set."""
    cls = method_class(recipe)
    cls.validate(recipe, need)
    for other in METHODS.values():
        if other.name != cls.name:
            for key in other.owned_keys:
                need(getattr(recipe, key) is None,
                     f"{key} is set but finetuning_type is {recipe.finetuning_type!r}, not {other.name!r}")


def apply_run(run_dir: str | Path, wb: Workbench, fold_biases: bool = False) -> Compose:
    """Make ``wb`` the model a finished run produced: LoRA adapters (lora, caft) and full weights are
    loaded into ``wb.model`` in place; the returned interventions (LoFIT phase v's head biases) must
    be installed at inference: ``with wb.hooks(apply_run(run, wb)): ...``. CAFT's ablation is not
    returned (the deployed model runs without it); LoFIT phase A's scales only select heads.
    ``fold_biases=True`` adds the head biases to the attention output projections instead
    (:meth:`HeadBias.fold_into`: same outputs, no hook, the fast generation path); they are then
    not returned."""
    import warnings

    run = RunFolder(run_dir)
    cfg = run.config
    if cfg.get("model_id") != wb.model_id:
        warnings.warn(f"run {run_dir} trained {cfg.get('model_id')!r}; applying it to {wb.model_id!r}", stacklevel=2)
    items = method_class(cfg["recipe"]).apply(run, cfg["recipe"], wb)
    if fold_biases:
        from ...interventions import HeadBias

        for item in items:
            if isinstance(item, HeadBias):
                item.fold_into(wb)
        items = [i for i in items if not isinstance(i, HeadBias)]
    wb.model.eval()
    return Compose(*items)


__all__ = ["METHODS", "Method", "Rewiring", "method_class", "make_method", "validate", "apply_run",
           "count_parameters", "freeze", "unfreeze", "inject_lora", "load_adapter", "save_adapter",
           "load_full_weights", "save_full_weights", "load_heads_file", "save_heads_file", "ADAPTER_DIR",
           "MODEL_DIR", "LORA_MODULES"]
