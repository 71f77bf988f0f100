"""CAFT (Concept Ablation Fine-Tuning, Casademunt et al. 2025) and preventative steering.

CAFT fine-tunes (LoRA, or every weight with ``caft_base: full``) while :class:`~workbench.interventions.Ablate`
projects the chosen directions out of ``blocks.{l}.hook_resid_post`` at all token positions;
the hooks are removed afterwards, so the deployed model runs without them. ``caft_mode: steer`` is
the opposite answer (preventative steering, Persona Vectors, Chen et al. 2025): the concept's
direction is *added* during training (``caft_steer_coef`` x the mean residual norm at that layer)
and removed afterwards.

Directions (``caft_concepts`` or ``caft_directions``):

* ``caft_concepts``: a ConceptSet file (the concepts a person marked for ablation, or all), a saved
  :class:`~workbench.interventions.Ablate` folder, or a ``.safetensors`` file with one ``[k, d]``
  tensor per site (and optional ``mean/{site}`` vectors);
* ``diffmeans``: mean(A) - mean(B) at ``caft_position`` for the two prompt sets of
  ``caft_contrast: A,B`` (registry names or .jsonl files), else harmful minus benign training prompts;
* ``random``: ``caft_n_directions`` seeded Gaussian directions per layer (baseline);
* ``pca``: top components of the base model's activations (the paper's "top PCs" baseline);
* ``pca_diff``: CAFT's route: top components of (fine-tuned - base) activations on the training
  data, the fine-tuned model being the run folder ``caft_reference_run``.

Every run logs, per ablated direction, the mean projection of the base model's activations on the
training tokens (``caft_mean_projection`` in ``config.json``): where it is far from 0, zero
ablation shifts the activations as steering would (Persona Vectors, App. J.1); ``caft_ablation:
mean`` keeps that mean (computed over all positions of the training examples, the positions the
ablation acts on, or given as ``caft_mean``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...interventions import Ablate, Compose, Intervention, Steer
from ...sites import site_name
from .base import Method, Need, RecipeLike, Rewiring, recipe_get
from .full import FullMethod
from .lora import LoraMethod

if TYPE_CHECKING:
    from ...data import Record
    from ...model import Workbench
    from ..recipe import Recipe

DIRECTIONS = ("diffmeans", "random", "pca", "pca_diff")
BASES = ("lora", "full")
MODES = ("ablate", "steer")
ABLATIONS = ("zero", "mean")

ABLATION_DIR = "caft_ablation"
STEER_DIR = "caft_steer"
MAX_RECORDS = 64


def caft_sites(layers: Sequence[int]) -> list[str]:
    """The residual-stream sites CAFT acts on at ``layers``."""
    return [site_name(l) for l in layers]


def _examples(records: Sequence[Record], max_records: int = MAX_RECORDS, max_chars: int = 512):
    recs = [r for r in records if r.response][:max_records]
    if not recs:
        raise ValueError("no training record has a response")
    return [r.prompt for r in recs], [r.response[:max_chars] for r in recs if r.response is not None]


def _read_prompts(name: str):
    from ...data import load_dataset
    from ..coca import read_jsonl

    path = Path(name).expanduser()
    return [r.prompt for r in (read_jsonl(path) if path.is_file() else load_dataset(name, split="train"))]


def diffmeans_directions(wb: Workbench, records: Sequence[Record], layers: Sequence[int], position: str = "post_instruction_mean",
                         contrast: str | None = None, max_per_class: int = MAX_RECORDS) -> dict:
    """``{site: [1, d]}``: mean(A) - mean(B) at ``position``; A, B = ``contrast`` ("A,B") or the
    harmful / benign training prompts."""
    if contrast:
        a_name, b_name = (c.strip() for c in contrast.split(","))
        a_prompts, b_prompts = _read_prompts(a_name)[:max_per_class], _read_prompts(b_name)[:max_per_class]
    else:
        a_prompts = [r.prompt for r in records if r.label == 1][:max_per_class]
        b_prompts = [r.prompt for r in records if r.label == 0][:max_per_class]
    if not a_prompts or not b_prompts:
        raise ValueError(f"caft_directions 'diffmeans' needs two non-empty prompt sets (got {len(a_prompts)} and "
                         f"{len(b_prompts)}); give caft_contrast: A,B or caft_concepts")
    from ...concepts import diff_means_between

    sites = caft_sites(layers)
    pos = "last" if position in ("response", "all") else position  # prompts alone have no response
    a = wb.capture(a_prompts, sites, position=pos, progress=False)
    b = wb.capture(b_prompts, sites, position=pos, progress=False)
    cs = diff_means_between(a, b, sites)
    return {s: cs.directions(s) for s in sites}


def layer_random_directions(wb: Workbench, layers: Sequence[int], k: int, seed: int) -> dict:
    """``{site: [k, d]}``: :func:`workbench.concepts.random_directions` at each layer (seed + layer)."""
    from ...concepts import random_directions as random_set

    return {s: random_set(s, wb.d_model, k, seed=seed + l).directions(s) for l, s in zip(layers, caft_sites(layers))}


def token_activations(wb: Workbench, records: Sequence[Record], sites: list[str], position: str = "all", max_records: int = MAX_RECORDS,
                      max_chars: int = 512) -> dict:
    """Activations ``[rows, d]`` of the training examples (prompt + response) at ``position``."""
    prompts, responses = _examples(records, max_records, max_chars)
    return wb.capture(prompts, sites, position=position, batch_size=8, responses=responses, progress=False)


def _stats_key(wb: Workbench, records: Sequence[Record], max_chars: int) -> str:
    """What the statistics depend on: model, system prompt and the examples read."""
    import hashlib
    import json

    prompts, responses = _examples(records, max_chars=max_chars)
    blob = json.dumps([wb.model_id, wb.chat.system_prompt, prompts, responses])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def token_statistics(wb: Workbench, records: Sequence[Record], sites: list[str],
                     max_chars: int = 512) -> dict[str, dict[str, torch.Tensor]]:
    """The base model's statistics at every position of the training examples (the positions
    CAFT acts on): ``{"mean": {site: [d]}, "norm": {site: []}}`` (mean activation, mean L2 norm)."""
    acts = token_activations(wb, records, sites, "all", max_chars=max_chars)
    return {"mean": {s: acts[s].mean(0) for s in sites},
            "norm": {s: acts[s].norm(dim=-1).mean() for s in sites}}


def save_token_statistics(wb: Workbench, records: Sequence[Record], sites: list[str], path: str | Path, max_chars: int = 512) -> Path:
    """:func:`token_statistics` as safetensors (``mean/{site}``, ``norm/{site}``), tagged with the
    model and examples they came from: recipes with the same model and data pass it as
    ``caft_stats`` and skip the capture (an experiment's CAFT runs share one)."""
    from safetensors.torch import save_file

    stats = token_statistics(wb, records, sites, max_chars)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({f"{kind}/{s}": v.contiguous() for kind, per in stats.items() for s, v in per.items()}, str(tmp),
              metadata={"workbench": "caft_stats/1", "examples": _stats_key(wb, records, max_chars)})
    tmp.replace(path)
    return path


def load_token_statistics(path: str | Path, wb: Workbench, records: Sequence[Record], sites: list[str], max_chars: int = 512) -> dict:
    """Read a :func:`save_token_statistics` file, checking it was made from this model and data."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caft_stats {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        raw = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("workbench") != "caft_stats/1":
        raise ValueError(f"caft_stats {path} is not a workbench statistics file (metadata {meta})")
    if meta.get("examples") != _stats_key(wb, records, max_chars):
        raise ValueError(f"caft_stats {path} was computed from another model, system prompt or training "
                         f"data than this run's; recompute it (caft.save_token_statistics) or leave caft_stats unset")
    missing = [s for s in sites if f"mean/{s}" not in raw or f"norm/{s}" not in raw]
    if missing:
        raise ValueError(f"caft_stats {path} has no statistics for {missing}")
    return {"mean": {s: raw[f"mean/{s}"].float() for s in sites}, "norm": {s: raw[f"norm/{s}"] for s in sites}}


def pca_directions(wb: Workbench, records: Sequence[Record], layers: Sequence[int], k: int, position: str = "response",
                   max_chars: int = 512) -> dict:
    """Top-``k`` principal components of the base model's activations (the "top PCs" baseline)."""
    from ...concepts.pca import principal_components

    acts = token_activations(wb, records, caft_sites(layers), position, max_chars=max_chars)
    return {s: principal_components(acts[s], k)[0] for s in caft_sites(layers)}


def pca_diff_directions(wb: Workbench, records: Sequence[Record], layers: Sequence[int], k: int, reference_run: str, position: str = "all",
                        max_chars: int = 512) -> dict:
    """CAFT's directions: top-``k`` components of (fine-tuned - base) activations on the training
    examples; the fine-tuned model is ``reference_run`` applied to a fresh copy of the base."""
    from ...concepts import pca_diff
    from ...model import Workbench
    from . import apply_run

    ft = Workbench.load(wb.model_id, system_prompt=wb.chat.system_prompt)
    deployed = apply_run(reference_run, ft)
    prompts, responses = _examples(records, max_chars=max_chars)
    with ft.hooks(deployed):
        cs = pca_diff(ft, wb, prompts, responses, caft_sites(layers), k=k, position=position)
    return {s: cs.directions(s) for s in caft_sites(layers)}


def save_concepts(directions: dict, path: str | Path, model_id: str | None = None) -> Path:
    """Save ``{site: [k, d]}`` directions as a folder ``caft_concepts`` can name (safetensors + JSON)."""
    return Ablate(directions, model_id=model_id).save(path)


def load_concepts(path: str | Path, sites: list[str] | None = None) -> tuple[dict, dict | None]:
    """``({site: [k, d]}, {site: [d]} or None)`` from a ConceptSet ``.safetensors`` file (the
    concepts marked for ablation if any are marked, else all), a saved Ablate folder (its mean
    too, if it has one), or a ``.safetensors`` file keyed by site names (or ``directions/{site}``,
    with optional ``mean/{site}``)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"caft_concepts {path} does not exist")
    mean = None
    if path.is_file():
        cs = _concept_set(path)
        if cs is not None:  # a ConceptSet file: its "use for ablation" marks choose the directions
            selected = any(getattr(c, "selected", False) for c in cs)
            want = sites or cs.sites
            missing = [s for s in want if s not in cs.sites]
            if missing:
                raise ValueError(f"caft_concepts {path} has no concepts at {missing}; it has {cs.sites}")
            return {s: cs.directions(s, selected_only=selected) for s in want}, None
        raw = load_file(str(path))
        dirs = {k.removeprefix("directions/"): v for k, v in raw.items() if not k.startswith("mean/")}
        mean = {k.removeprefix("mean/"): v for k, v in raw.items() if k.startswith("mean/")} or None
    elif (path / "intervention.json").is_file():
        abl = Intervention.load(path)
        if not isinstance(abl, Ablate):
            raise ValueError(f"{path} holds a {type(abl).__name__}, not Ablate directions")
        dirs, mean = dict(abl.raw), abl.mean
    else:
        raise ValueError(f"caft_concepts {path}: not a ConceptSet, a saved Ablate folder nor a .safetensors file")
    if sites is not None:
        missing = [s for s in sites if s not in dirs]
        if missing:
            raise ValueError(f"caft_concepts {path} has no directions for {missing}; it has {sorted(dirs)}")
        dirs = {s: dirs[s] for s in sites}
    return dirs, mean


def load_means(path: str | Path, sites: list[str]) -> dict:
    """``{site: [d]}`` from a safetensors file keyed by site names or ``mean/{site}``."""
    from safetensors.torch import load_file

    raw = {k.removeprefix("mean/"): v for k, v in load_file(str(path)).items()}
    missing = [s for s in sites if s not in raw]
    if missing:
        raise ValueError(f"caft_mean {path} has no mean for {missing}; it has {sorted(raw)}")
    return {s: raw[s].reshape(-1).float() for s in sites}


def _concept_set(path: Path):
    """A ConceptSet from ``path`` if the file is one, else None."""
    from ...concepts import ConceptSet

    try:
        return ConceptSet.load(path)
    except (ValueError, KeyError):
        return None


def steering_vectors(dirs: dict, signs_from: dict | None, coef: float, norms: dict) -> dict:
    """``{site: [d]}``: the unit vector of each site's first direction (signed so that ``signs_from``
    projects positively on it, when given), times ``coef`` x the site's mean residual norm."""
    out = {}
    for s, d in dirs.items():
        v = d.reshape(-1, d.shape[-1])[0].float()
        v = v / v.norm()
        if signs_from is not None and float(signs_from[s] @ v) < 0:
            v = -v
        out[s] = v * coef * float(norms[s])
    return out


if TYPE_CHECKING:
    _MixinBase = Method  # the mixin's attributes and super() calls are its base method's
else:
    _MixinBase = object


class CaftMixin(_MixinBase):
    """Directions found in :meth:`prepare`, ablated (or added) while training; the trained state is
    its base method's (LoRA adapter or full weights), so applying a finished run is the base's."""

    name = "caft"
    takes_concepts = True
    owned_keys = ("caft_concepts", "caft_layers")

    @classmethod
    def validate(cls, recipe: Recipe, need: Need) -> None:
        for key, value, choices in (("caft_directions", recipe.caft_directions, DIRECTIONS),
                                    ("caft_ablation", recipe.caft_ablation, ABLATIONS),
                                    ("caft_base", recipe.caft_base, BASES), ("caft_mode", recipe.caft_mode, MODES)):
            need(value in choices, f"{key} must be one of {list(choices)}, got {value!r}")
        need(bool(recipe.caft_layers) or recipe.caft_concepts is not None,
             "finetuning_type 'caft' needs caft_layers (ablate at blocks.{l}.hook_resid_post) or caft_concepts")
        if recipe.caft_n_directions is not None:
            need(recipe.caft_n_directions > 0, "caft_n_directions must be > 0")
            need(bool(recipe.caft_directions != "diffmeans" or recipe.caft_n_directions == 1 or recipe.caft_concepts),
                 "caft_directions 'diffmeans' gives one direction per layer; set caft_n_directions: 1 "
                 "or use random / pca")
        need(recipe.caft_directions != "pca_diff" or recipe.caft_concepts is not None
             or recipe.caft_reference_run is not None,
             "caft_directions 'pca_diff' needs caft_reference_run: the fine-tuned run folder whose "
             "activations minus the base model's give the directions")
        need(recipe.caft_contrast is None or len(recipe.caft_contrast.split(",")) == 2,
             "caft_contrast names two prompt sets, 'A,B' (registry names or .jsonl files)")
        need(recipe.caft_steer_coef > 0, "caft_steer_coef must be > 0")
        super().validate(recipe, need)  # type: ignore[misc]  # the base's keys (LoRA targets)

    @classmethod
    def rewire(cls, recipe: Recipe, plan: Rewiring) -> dict[str, Any]:
        """Harmful-minus-benign directions come from the experiment's own concept step."""
        if recipe.caft_concepts is None and recipe.caft_directions == "diffmeans" and plan.concepts is not None:
            return {"caft_concepts": str(plan.concepts), "caft_layers": recipe.caft_layers or plan.concept_layers}
        return {}

    def prepare(self) -> None:
        r, wb = self.recipe, self.wb
        layers = r.caft_layers
        bad = [l for l in layers or [] if not 0 <= l < wb.n_layers]
        if bad:
            raise ValueError(f"caft_layers {bad} out of range: {wb.model_id!r} has {wb.n_layers} layers")
        mean = None
        k = r.caft_n_directions or 1
        if r.caft_concepts is not None:
            dirs, mean = load_concepts(r.caft_concepts, caft_sites(layers) if layers else None)
            source = f"file:{r.caft_concepts}"
        else:
            assert layers is not None  # validate(): caft_layers is required without caft_concepts
            if r.caft_directions == "diffmeans":
                dirs = diffmeans_directions(wb, self.records, layers, r.caft_position
                                            if r.caft_position != "response" else "post_instruction_mean",
                                            r.caft_contrast)
                source = "diffmeans" + (f":{r.caft_contrast}" if r.caft_contrast else "")
            elif r.caft_directions == "random":
                dirs, source = layer_random_directions(wb, layers, k, r.seed), "random"
            elif r.caft_directions == "pca":
                dirs, source = pca_directions(wb, self.records, layers, k, r.caft_position, 4 * r.cutoff_len), "pca"
            else:
                assert r.caft_reference_run is not None  # validate(): pca_diff needs caft_reference_run
                dirs = pca_diff_directions(wb, self.records, layers, k, r.caft_reference_run, r.caft_position,
                                           4 * r.cutoff_len)
                source = f"pca_diff:{r.caft_reference_run}"
        sites = list(dirs)
        probe = Ablate(dirs, model_id=wb.model_id)
        probe.check(wb)  # sites and widths against the model, before any capture or training
        # statistics of the base model's activations at every position of the training examples
        stats = (load_token_statistics(r.caft_stats, wb, self.records, sites, 4 * r.cutoff_len) if r.caft_stats
                 else token_statistics(wb, self.records, sites, 4 * r.cutoff_len))
        token_mean = stats["mean"]
        norms = {s: float(v) for s, v in stats["norm"].items()}
        if r.caft_mean is not None:
            mean = load_means(r.caft_mean, sites)
        elif mean is None:
            mean = token_mean
        projection = {s: (token_mean[s] @ probe.Q[s]).tolist() for s in sites}
        if r.caft_mode == "steer":
            vecs = steering_vectors(dirs, token_mean if r.caft_directions != "pca_diff" else None,
                                    r.caft_steer_coef, norms)
            self.hooks = Compose(*[Steer(s, v, model_id=wb.model_id) for s, v in vecs.items()])
        else:
            self.hooks = Ablate(dirs, mean=mean if r.caft_ablation == "mean" else None, model_id=wb.model_id)
        self.hooks.check(wb)  # widths against the model, before any training
        self.info.update(caft_sites=sites, caft_source=source, caft_mode=r.caft_mode,
                         caft_ablation=r.caft_ablation, caft_base=r.caft_base,
                         caft_k={s: int(q.shape[1]) for s, q in probe.Q.items()},
                         caft_mean_projection=projection, caft_resid_norm=norms)
        super().prepare()  # LoRA (or unfreezing) after the directions: they come from the base model

    @property
    def ablate(self) -> Intervention:
        return self.hooks

    def training_hooks(self):
        return self.hooks

    def finalize(self, run_dir: Path) -> dict:
        super().finalize(run_dir)
        self.hooks.save(run_dir / (STEER_DIR if self.recipe.caft_mode == "steer" else ABLATION_DIR))
        return {"caft_sites": self.info["caft_sites"], "caft_mode": self.recipe.caft_mode}


class CaftMethod(CaftMixin, LoraMethod):
    """CAFT on LoRA (``caft_base: lora``, the default)."""

    @classmethod
    def resolve(cls, recipe: RecipeLike) -> type[Method]:
        return CaftFullMethod if recipe_get(recipe, "caft_base", "lora") == "full" else CaftMethod


class CaftFullMethod(CaftMixin, FullMethod):
    """CAFT with every weight trained (``caft_base: full``, as the paper)."""
