"""Training recipes: YAML files with LLaMA-Factory-style keys, validated with clear errors.

>>> recipe = load_recipe("examples/lofit/head.yaml")     # or Recipe.from_dict({...})
>>> recipe.finetuning_type
'lofit'

Every key is a field of :class:`Recipe` with a type; an unknown key names the closest known one
(difflib) and lists them all, and a wrong-typed value names the key, the expected type and what
was given. Relative paths (``output_dir``, ``lofit_heads_path``, ...) are relative to the current
directory, as in LLaMA-Factory: run the examples from the repository root.

One PyYAML gotcha is forgiven: YAML 1.1 reads ``1e-4`` (no dot) as a string, so float keys
accept a string that parses as a number; ``1.0e-4`` is the portable spelling.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ..models import DEFAULT_MODEL
from . import methods
from .coca import REFUSAL_SETS
from .coca import VARIANTS as COCA_VARIANTS
from .errors import RecipeError
from .methods.lora import LORA_MODULES

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")


@dataclass
class Recipe:
    """One training run. Keys follow LLaMA-Factory where it has one."""

    # --- what to train
    output_dir: str = ""                      # the run folder (required)
    dataset: str = ""                         # registry names or .jsonl files, comma-separated (required)
    model_name_or_path: str = DEFAULT_MODEL
    stage: str = "sft"                        # only supervised fine-tuning
    do_train: bool = True
    finetuning_type: str = "lora"             # lora | full | lofit | caft
    # --- data
    dataset_split: str | None = "train"       # train | val | test | null (all records)
    coca_variant: str | None = None           # normal | think | tagged (+ _warm) (see coca.py)
    max_samples: int | None = None            # per dataset, a seeded random sample
    refusals: str = "default"                 # the harmful records' refusal texts: default | distinct (coca.REFUSAL_SETS)
    benign_answers: str = "reference"         # reference | self (the starting model's own answers, train.self_answers)
    self_answers_path: str | None = None      # benign_answers: self: the answers' file, reused (default output_dir/self_answers.json)
    wrapped_harmful: float = 0.0              # add this share of the harmful records again, jailbreak-wrapped (data.wrapped_harmful)
    encoded_harmful: float = 0.0              # add this share of the harmful records again, encoded (data.encoded_harmful)
    long_benign: int = 0                      # add this many long document-task prompts (data.long_benign; needs benign_answers: self)
    answer_weight: float = 1.0                # loss weight of the answer's first tokens (after a COCA reasoning step)
    answer_weight_tokens: int = 8             # how many answer tokens answer_weight applies to
    cutoff_len: int = 256                     # tokens per example (prompt + response), longer ones cut
    system_prompt: str | None = None          # chat system message; null = the template's default, "" = none
    # --- LoRA (lora and caft)
    lora_rank: int = 8
    lora_alpha: int | None = None             # default 2 * lora_rank
    lora_dropout: float = 0.0
    lora_target: str = "all"                  # "all" (attention + MLP) or e.g. "q_proj,v_proj"
    # --- LoFIT
    lofit_component: str | None = None        # A (phase A: select heads) | v (phase v: bias tuning)
    lofit_topk_heads: int | None = None       # phase A: default 5% of the trained heads; phase v: all in the file
    lofit_heads_path: str | None = None       # phase A writes it (default output_dir/heads.json); phase v reads it
    lofit_applied_layers: list[int] | None = None   # phase A's layers (default: all)
    lofit_l1_lambda: float = 1e-3
    lofit_init_std: float = 1e-3
    # --- CAFT
    caft_concepts: str | None = None          # ConceptSet file, saved Ablate folder or safetensors {site: [k, d]}
    caft_layers: list[int] | None = None      # ablate at blocks.{l}.hook_resid_post
    caft_directions: str = "diffmeans"        # diffmeans | random | pca | pca_diff (when caft_concepts is not given)
    caft_n_directions: int | None = None      # k per layer for random / pca / pca_diff (default 1)
    caft_ablation: str = "zero"               # zero: x - (x Q) Q^T | mean: x - ((x - mu) Q) Q^T
    caft_base: str = "lora"                   # what CAFT fine-tunes: lora | full
    caft_mode: str = "ablate"                 # ablate (CAFT) | steer (preventative steering: add the concept)
    caft_steer_coef: float = 1.0              # steer: added norm, as a multiple of the mean residual norm there
    caft_reference_run: str | None = None     # pca_diff: the fine-tuned run folder compared with the base model
    caft_position: str = "response"           # tokens the directions / mean / norms are read at (all, response, last, ...)
    caft_contrast: str | None = None          # diffmeans: "A,B" two prompt sets (registry names / .jsonl), mean(A) - mean(B)
    caft_mean: str | None = None              # mean ablation: a safetensors {site: [d]} to use as the mean
    caft_stats: str | None = None             # the base model's token statistics on this data (caft.save_token_statistics): no capture
    # --- warm start
    warm_start_from: str | None = None        # a previous run folder: start from its trained parameters
    # --- optimisation
    learning_rate: float = 1e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1                       # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    group_by_length: bool = False             # batches of similar length (less padding; HF's LengthGroupedSampler)
    bf16: bool = False                        # bf16 autocast (weights and optimizer stay fp32); pays where matrix units do bf16
    packing: bool = False                     # each batch runs as one row of its real tokens (no padding; same loss)
    seed: int = 42
    # --- run folder
    save_steps: int = 500
    save_total_limit: int | None = None
    logging_steps: int = 1
    overwrite_output_dir: bool = False
    resume_from_checkpoint: str | bool | None = None   # true (latest checkpoint) or a checkpoint folder
    plot_loss: bool = True
    report_to: str = "none"

    # ------------------------------------------------------------------ construction
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> Recipe:
        if not isinstance(data, dict):
            raise RecipeError(f"{source}: a recipe is a mapping of keys to values, got {type(data).__name__}")
        known = cls.keys()
        unknown = [k for k in data if k not in known]
        if unknown:
            lines = []
            for k in unknown:
                close = difflib.get_close_matches(str(k), known, n=1, cutoff=0.6)
                lines.append(f"unknown key {k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise RecipeError(f"{source}: " + "; ".join(lines) + f". Known keys: {', '.join(sorted(known))}")
        hints = typing.get_type_hints(cls)
        values = {k: _check_type(k, v, hints[k], source) for k, v in data.items()}
        recipe = cls(**values)
        recipe.validate(source)
        return recipe

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        from .._files import parse_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe {path} does not exist")
        return cls.from_dict(parse_file(path, RecipeError, "yaml") or {}, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> Recipe:
        return Recipe.from_dict({**self.to_dict(), **changes})

    # ------------------------------------------------------------------ checks
    def validate(self, source: str = "recipe") -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise RecipeError(f"{source}: {msg}")

        need(bool(self.output_dir), "output_dir is required (the run folder)")
        need(bool(self.dataset.strip()), "dataset is required (registry names or .jsonl files, comma-separated)")
        _choice("stage", self.stage, ("sft",), source)
        _choice("finetuning_type", self.finetuning_type, list(methods.METHODS), source)
        _choice("lr_scheduler_type", self.lr_scheduler_type, SCHEDULERS, source)
        if self.dataset_split is not None:
            _choice("dataset_split", self.dataset_split, ("train", "val", "test"), source)
        _choice("refusals", self.refusals, list(REFUSAL_SETS), source)
        _choice("benign_answers", self.benign_answers, ("reference", "self"), source)
        if self.coca_variant is not None:
            _choice("coca_variant", self.coca_variant, COCA_VARIANTS, source)
        for key in ("cutoff_len", "lora_rank", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "save_steps", "logging_steps", "answer_weight_tokens"):
            need(getattr(self, key) > 0, f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("learning_rate", "num_train_epochs", "answer_weight"):
            need(getattr(self, key) > 0, f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("weight_decay", "lora_dropout", "max_grad_norm"):
            need(getattr(self, key) >= 0, f"{key} must be >= 0, got {getattr(self, key)}")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        need(0 <= self.wrapped_harmful <= 1, f"wrapped_harmful must be in [0, 1], got {self.wrapped_harmful}")
        need(0 <= self.encoded_harmful <= 1, f"encoded_harmful must be in [0, 1], got {self.encoded_harmful}")
        need(self.long_benign >= 0, f"long_benign must be >= 0, got {self.long_benign}")
        need(not self.long_benign or self.benign_answers == "self",
             "long_benign prompts have no reference answer: set benign_answers: self")
        need(self.max_samples is None or self.max_samples > 0, f"max_samples must be > 0, got {self.max_samples}")
        need(self.max_steps == -1 or self.max_steps > 0, f"max_steps must be > 0 or -1, got {self.max_steps}")
        methods.validate(self, need)  # the method's own keys (workbench.train.methods)
        if self.coca_variant and self.coca_variant.endswith("_warm"):
            need(self.warm_start_from is not None,
                 f"coca_variant {self.coca_variant!r} is a warm start: set warm_start_from to the run folder "
                 f"to start from (e.g. a previous bias-tuning run)")

    def lora_targets(self) -> list[str]:
        if self.lora_target.strip() == "all":
            return list(LORA_MODULES)
        return [t.strip() for t in self.lora_target.split(",") if t.strip()]

    def datasets(self) -> list[str]:
        return [d.strip() for d in self.dataset.split(",") if d.strip()]

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def load_recipe(recipe: str | Path | dict | Recipe) -> Recipe:
    """A :class:`Recipe` from a YAML path, a dict or a Recipe."""
    if isinstance(recipe, Recipe):
        recipe.validate()
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    return Recipe.from_yaml(recipe)


# ---------------------------------------------------------------------- type checks
def _choice(key: str, value, choices, source: str) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"{source}: {key} must be one of {list(choices)}, got {value!r}{hint}")


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return tp.__name__


def _check_type(key: str, value, tp, source: str):
    ok, converted = _convert(value, tp)
    if not ok:
        raise RecipeError(f"{source}: key {key!r} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return converted


def _convert(value, tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):  # exact matches first (a bool is not an int here)
            ok, v = _convert(value, arg)
            if ok:
                return True, v
        return False, None
    if tp is type(None):
        return value is None, None
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                return True, float(value)
            except ValueError:
                return False, None
        return False, None
    if tp is str:
        return isinstance(value, str), value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if inner is int and isinstance(value, str):  # LLaMA-Factory style "10,12,14"
            try:
                return True, [int(x) for x in value.split(",") if x.strip()]
            except ValueError:
                return False, None
        if inner is int and isinstance(value, int) and not isinstance(value, bool):
            return True, [value]
        if not isinstance(value, list):
            return False, None
        out = []
        for item in value:
            ok, v = _convert(item, inner)
            if not ok:
                return False, None
            out.append(v)
        return True, out
    return isinstance(value, tp), value


__all__ = ["Recipe", "RecipeError", "load_recipe", "COCA_VARIANTS", "LORA_MODULES"]
