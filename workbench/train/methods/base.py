"""The method interface every ``finetuning_type`` implements.

:class:`Method` is both the per-run object (prepare the model, hooks during training, save and load
the trainable state for checkpoints and the final artifacts) and, through class methods, the one
place that knows the method's recipe keys, how a finished run is applied and how an experiment
rewires it. The registry (:mod:`workbench.train.methods`) maps ``finetuning_type`` to classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Union

import torch
from torch import nn

from ...interventions import Intervention
from ..run_folder import RunFolder

if TYPE_CHECKING:
    from ...data import Record
    from ...model import Workbench
    from ..recipe import Recipe

BRIDGE = "._original_component"
Need = Callable[[bool, str], None]
RecipeLike = Union["Recipe", Mapping[str, Any]]


def recipe_get(recipe: RecipeLike, key: str, default: Any = None) -> Any:
    """``recipe[key]`` for a Recipe or the recipe mapping a run folder's ``config.json`` keeps."""
    if isinstance(recipe, Mapping):
        return recipe.get(key, default)
    return getattr(recipe, key, default)


@dataclass
class Rewiring:
    """What an experiment tells a method when it moves a recipe's run into ``run_dir``: ``moved``
    maps the original run folders and files of recipes listed before to their new paths."""

    run_dir: Path
    source: str                      # the recipe file, for messages
    method: str                      # the experiment's method name, for messages
    moved: dict[str, str] = field(default_factory=dict)
    concepts: Path | None = None     # the experiment's harmful-vs-benign ConceptSet file
    concept_layers: list[int] = field(default_factory=list)

    @staticmethod
    def key(path: str | Path) -> str:
        return Path(path).as_posix().removeprefix("./").rstrip("/")


def strip_bridge(name: str) -> str:
    """A parameter name of the bridged model -> the plain Hugging Face name."""
    return name.replace(BRIDGE, "")


def is_bridged(model: nn.Module) -> bool:
    return any(n.endswith(BRIDGE) for n, _ in model.named_modules())


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` over unique parameters."""
    params = {id(p): p for p in module.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


class Method:
    """One ``finetuning_type``: how it trains (:meth:`prepare` ... :meth:`finalize`, per run), and, as
    class methods, how its recipe keys are checked (:meth:`validate`), how a finished run is put
    back on a model (:meth:`apply`) and how an experiment rewires its paths (:meth:`rewire`).
    Subclasses fill :attr:`core` (what the Trainer optimizes) and :attr:`extras` (intervention
    parameters)."""

    name: ClassVar[str] = "base"
    changes_weights: ClassVar[bool] = True   # trains the model's own weights (LoFIT trains hooks)
    takes_concepts: ClassVar[bool] = False   # reads a ConceptSet (caft_concepts)
    owned_keys: ClassVar[tuple[str, ...]] = ()  # recipe keys no other method may set

    def __init__(self, wb: Workbench, recipe: Recipe, records: Sequence[Record]):
        self.wb, self.recipe, self.records = wb, recipe, records
        self.core: nn.Module = wb.model
        self.extras: nn.Module | None = None
        self.info: dict = {}

    # ------------------------------------------------------------------ the method, as a class
    @classmethod
    def resolve(cls, recipe: RecipeLike) -> type[Method]:
        """The class that trains ``recipe`` (CAFT picks its base: LoRA or full)."""
        return cls

    @classmethod
    def validate(cls, recipe: Recipe, need: Need) -> None:
        """Check the keys this method reads; ``need(cond, message)`` raises a RecipeError."""

    @classmethod
    def apply(cls, run: RunFolder, recipe: Mapping[str, Any], wb: Workbench) -> list[Intervention]:
        """Put the finished run's trained state on ``wb`` (in place); return the interventions that
        must stay installed at inference."""
        return []

    @classmethod
    def rewire(cls, recipe: Recipe, plan: Rewiring) -> dict[str, Any]:
        """Recipe changes when an experiment moves this run into its own folder."""
        return {}

    # ------------------------------------------------------------------ one run
    def prepare(self) -> None:
        """Create trainable parameters (called once, after seeding)."""

    def warm_start(self, run_dir: Path) -> None:
        raise NotImplementedError(f"{self.name}: warm start is not supported")

    def training_hooks(self) -> Intervention | None:
        """What is installed while training."""
        return None

    def deployed(self) -> Intervention | None:
        """What must stay installed at inference (e.g. LoFIT's head biases)."""
        return None

    def extra_loss(self) -> dict[str, torch.Tensor]:
        """Penalties added to the loss (e.g. LoFIT's L1)."""
        return {}

    def save_trainables(self, folder: Path) -> None:
        raise NotImplementedError

    def load_trainables(self, folder: Path) -> None:
        raise NotImplementedError

    def finalize(self, run_dir: Path) -> dict:
        """Write the final artifacts into the run folder; return summary entries."""
        self.save_trainables(run_dir)
        return {}

    def cleanup(self) -> None:
        """Called after training, also on an exception."""



def freeze(model: nn.Module) -> dict[int, bool]:
    """Freeze every parameter; return the previous ``requires_grad`` flags (for :func:`unfreeze`)."""
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    return flags


def unfreeze(model: nn.Module, flags: dict[int, bool]) -> None:
    for p in model.parameters():
        p.requires_grad_(flags.get(id(p), p.requires_grad))
