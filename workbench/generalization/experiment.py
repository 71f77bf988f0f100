"""CAFT in its own setting: steer what fine-tuning generalizes to on a spurious-correlation task.

    workbench experiment examples/caft_gender.yaml [--quick] [--out DIR]

Per training seed:

1. ``train/{seed}/plain``: plain fine-tuning on the task's training split (both cues agree);
2. ``concepts/{seed}/``: ``contrast.safetensors`` (below) and ``pca_diff.safetensors``, CAFT's
   directions, the top principal components of (fine-tuned - base) activations on the training examples at every CAFT layer (no OOD data);
   each scored by how well it separates the spurious attribute and the intended one on the
   training prompts (``attributes.json``), then chosen automatically (``probe_pick``: the
   components about the spurious attribute) and, where the file gives one, by a person
   (``person_pick``, from the top-activating examples in ``concepts/{seed}/examples.html``);
3. ``train/{seed}/{method}``: every other method, a recipe built from ``recipe`` + its overrides;
   ``@probe_pick`` / ``@person_pick`` / ``@top_pcs`` / ``@random`` / ``@contrast`` in
   ``caft_concepts`` name the ConceptSets of this seed (``@contrast`` is the spurious attribute's
   difference of means on the base model's training prompts at each ``contrast_position``, one
   direction per position and layer; top PCs and random directions get as many directions per
   layer as the largest chosen set: a matched control; step 2's PCA runs only where a method
   uses a PCA-made set);
4. ``eval/{seed}/{method}.json``: ID / OOD accuracy and the flipped (spurious) rate from the A-vs-B
   (or pronoun-vs-pronoun) next-token logits, with Wilson intervals; CAFT runs also with the
   ablation kept at inference, and the leakage check (probe of the spurious attribute on the
   complement of the ablated subspace);
5. ``results.json``, ``results.md``, ``report.html`` (plotly: ID / OOD per method, mean over seeds
   with the per-seed spread and the pooled Wilson interval).

A finished step is skipped when the experiment runs again (interrupted runs resume).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._files import write_json_atomic
from .._log import get_logger
from ..models import DEFAULT_MODEL

if TYPE_CHECKING:
    from ..model import Workbench

log = get_logger(__name__)

REFS = ("@probe_pick", "@person_pick", "@top_pcs", "@random", "@contrast", "@sae_pick")
PLAIN = "plain"


class GeneralizationError(ValueError):
    """An experiment file with an unknown key, a wrong type or a method that cannot run."""


@dataclass
class GeneralizationExperiment:
    """One generalization experiment file (YAML); ``quick`` holds the keys ``--quick`` replaces."""

    task: str = "gender_pronoun"
    task_options: dict[str, Any] = field(default_factory=dict)
    output_dir: str = "runs/caft_gender"
    model: str = DEFAULT_MODEL
    system_prompt: str | None = ""
    n_train: int = 400
    n_test: int = 100
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    layers: list[int] = field(default_factory=lambda: [6, 12, 18, 24])
    n_components: int = 10
    concept_position: str = "all"
    attributes: dict[str, str] = field(default_factory=lambda: {"spurious": "stereotype", "intended": "case"})
    pick_min_score: float = 0.65
    contrast_position: str | list[str] = "last"   # @contrast: where (one direction per position) the spurious groups are compared
    recipe: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    person_pick: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    score_n: int = 160          # training prompts for @contrast and the components' attribute scores
    leakage_n: int = 160        # training prompts for the leakage check (0: no check)
    ablation_kept: bool = True  # also evaluate CAFT runs with the ablation kept at inference
    baseline: bool = True       # also evaluate the untouched model
    # @sae_pick: an SAE per layer (sae-lens, on the base model's activations of the training examples),
    # the sae_top latents per layer by attribution to the training loss, then the probe pick among them
    sae_n: int = 160            # training examples whose tokens train the SAEs and score the attribution
    sae_width: int = 1152       # latents per SAE (2 x d_model)
    sae_k: int = 16             # active latents per token (TopK)
    sae_epochs: float = 8.0
    sae_top: int = 8            # latents per layer kept by attribution, before the pick
    quick: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, source: str = "experiment", quick: bool = False) -> GeneralizationExperiment:
        from .._files import settings_from_dict

        data = settings_from_dict(cls, data, source, GeneralizationError, quick, untyped=("contrast_position",))
        exp = cls(**data)
        pos = exp.contrast_position
        if not (isinstance(pos, str) or (isinstance(pos, list) and pos and all(isinstance(p, str) for p in pos))):
            raise GeneralizationError(f"{source}: contrast_position should be a position or a list of them, got {pos!r}")
        if PLAIN not in exp.methods:
            exp.methods = {PLAIN: {}, **exp.methods}
        for name, over in exp.methods.items():
            if not isinstance(over, dict):
                raise GeneralizationError(f"{source}: method {name!r} must map recipe keys to values, got {over!r}")
        if not exp.seeds:
            raise GeneralizationError(f"{source}: seeds is empty")
        from ..data.tasks import TASKS, is_task

        if not is_task(exp.task):
            raise GeneralizationError(f"{source}: task {exp.task!r} is not a generated task; choose from {TASKS}")
        return exp

    @classmethod
    def from_yaml(cls, path: str | Path, quick: bool = False) -> GeneralizationExperiment:
        from .._files import read_yaml_file

        return cls.from_dict(read_yaml_file(path, GeneralizationError) or {}, source=str(path), quick=quick)

    @property
    def contrast_positions(self) -> list[str]:
        p = self.contrast_position
        return [p] if isinstance(p, str) else list(p)

    @property
    def sites(self) -> list[str]:
        from ..sites import site_name

        return [site_name(l) for l in self.layers]


def is_generalization_file(path: str | Path) -> bool:
    """Whether an experiment YAML file is a generalization experiment (it names a ``task``)."""
    from .._files import read_yaml_file

    data = read_yaml_file(path, GeneralizationError) or {}
    return isinstance(data, dict) and "task" in data


# ---------------------------------------------------------------------- data
def task_records(exp: GeneralizationExperiment, split: str, seed: int) -> list:
    from ..data.tasks import load_task

    n = exp.n_train if split == "train" else exp.n_test
    return load_task(exp.task, split, n=n, seed=seed if split == "train" else 1000, **exp.task_options)


def attribute_labels(records, attributes: dict[str, str]) -> dict[str, list[int]]:
    """``{role: [n] 0/1}`` from each record's ``meta[attribute]`` (two values; the first seen in
    sorted order is 0)."""
    out = {}
    for role, key in attributes.items():
        values = [r.meta.get(key) for r in records]
        levels = sorted({str(v) for v in values})
        if len(levels) != 2:
            raise GeneralizationError(f"attribute {key!r} needs two values in the training data, got {levels}")
        out[role] = [levels.index(str(v)) for v in values]
    return out


def _load(exp: GeneralizationExperiment):
    from ..model import Workbench

    return Workbench.load(exp.model, system_prompt=exp.system_prompt)


# ---------------------------------------------------------------------- steps
def recipe_for(exp: GeneralizationExperiment, method: str, seed: int, out: Path, concepts: dict[str, Path],
               k: int) -> dict:
    from ..train.methods import method_class

    over = dict(exp.methods[method])
    rec = {"model_name_or_path": exp.model, "system_prompt": exp.system_prompt, "dataset_split": None,
           "dataset": str(out / "data" / f"train_{seed}.jsonl"), "output_dir": str(out / "train" / str(seed) / method),
           "overwrite_output_dir": True, "seed": seed, "save_steps": 10_000, "logging_steps": 5,
           **exp.recipe, **over}
    if method_class(rec).takes_concepts:
        ref = rec.get("caft_concepts")
        if not (isinstance(ref, str) and ref.startswith("@")):  # a found set names its own sites (a pick
            rec.setdefault("caft_layers", list(exp.layers))     # may leave layers out)
        stats = stats_path(out, seed)
        if stats.is_file() and rec.get("cutoff_len", _default_cutoff()) == _stats_cutoff(exp) \
                and set(rec.get("caft_layers") or exp.layers) <= set(exp.layers):
            rec.setdefault("caft_stats", str(stats))
        if isinstance(ref, str) and ref.startswith("@"):
            if ref not in concepts:
                raise GeneralizationError(f"method {method!r}: caft_concepts {ref} is not available for seed {seed} "
                                          f"(known: {', '.join(REFS)}; @person_pick needs person_pick for this seed)")
            rec["caft_concepts"] = str(concepts[ref])
        if rec.get("caft_directions") == "pca_diff" and "caft_reference_run" not in rec:
            rec["caft_reference_run"] = str(out / "train" / str(seed) / PLAIN)
        if rec.get("caft_n_directions") == "@k":
            rec["caft_n_directions"] = k
    return rec


def stats_path(out: Path, seed: int) -> Path:
    """The base model's token statistics on seed ``seed``'s training data, shared by its CAFT runs."""
    return out / "concepts" / str(seed) / "token_stats.safetensors"


def _default_cutoff() -> int:
    from ..train.recipe import Recipe

    return Recipe.cutoff_len


def _stats_cutoff(exp: GeneralizationExperiment) -> int:
    return int(exp.recipe.get("cutoff_len", _default_cutoff()))


def train_method(exp, method: str, seed: int, out: Path, concepts: dict[str, Path], k: int) -> Path:
    from ..train import train

    rec = recipe_for(exp, method, seed, out, concepts, k)
    run = Path(rec["output_dir"])
    if (run / "summary.json").is_file():
        return run
    log.info(f"[experiment] seed {seed}: training {method}")
    train(rec, progress=False)
    return run


PCA_REFS = ("@probe_pick", "@person_pick", "@top_pcs")


def needs_pca(exp: GeneralizationExperiment) -> bool:
    """Whether a method uses a direction set made from CAFT's PCA (plain minus base)."""
    return any(v.get("caft_concepts") in PCA_REFS for v in exp.methods.values())


def find_concepts(exp, seed: int, out: Path, train_recs) -> tuple[dict[str, Path], int, dict]:
    """``@contrast``; where a method needs them, PCA of (plain - base) on the training data,
    attribute scores, the automatic and the person's picks; the matched-k controls. Returns
    ``({ref: file}, k, info)``; ``k`` (directions per layer of ``@top_pcs`` and ``@random``) is the
    probe pick's mean count per layer, or the number of contrast positions, whichever is larger."""
    from ..concepts import ConceptSet, pca_diff, random_directions
    from ..train import apply_run
    from ..train.methods.caft import save_token_statistics
    from .selection import attribute_scores, probe_pick

    folder = out / "concepts" / str(seed)
    info_path = folder / "concepts.json"
    refs = {r: folder / f"{r[1:]}.safetensors" for r in REFS}
    base = _load(exp)
    score_recs = train_recs[: exp.score_n]
    labels = attribute_labels(score_recs, exp.attributes)
    contrast_concepts(exp, base, score_recs, labels["spurious"], refs["@contrast"])
    if not stats_path(out, seed).is_file():
        save_token_statistics(base, train_recs, exp.sites, stats_path(out, seed), 4 * _stats_cutoff(exp))
    pca = needs_pca(exp)
    cached = json.loads(info_path.read_text()) if info_path.is_file() else None
    if cached is not None and (cached.get("pca") or not pca) and (cached.get("sae_pick") or not needs_sae(exp)):
        return {r: p for r, p in refs.items() if p.is_file()}, cached["k"], cached
    info: dict[str, Any] = {"pca": pca, "probe_pick": None, "person_pick": None, "per_site_probe_pick": None}
    k = len(exp.contrast_positions)
    folder.mkdir(parents=True, exist_ok=True)
    if pca:
        ft = _load(exp)
        with ft.hooks(apply_run(out / "train" / str(seed) / PLAIN, ft)):
            recs = [r for r in train_recs if r.response][:64]
            cs = pca_diff(ft, base, [r.prompt for r in recs], [r.response for r in recs], exp.sites,
                          k=exp.n_components, position=exp.concept_position)
            acts = ft.capture([r.prompt for r in score_recs], exp.sites, position="last", progress=False)
        scores = attribute_scores(cs, dict(acts), labels)
        cs.save(folder / "pca_diff.safetensors")
        picked_cs, picked = probe_pick(cs, scores, "spurious", "intended", exp.pick_min_score)
        picked_cs.for_ablation().save(refs["@probe_pick"])
        per_site = {s: sum(1 for n in picked if cs[n].site == s) for s in exp.sites}
        k = max(k, round(sum(per_site.values()) / len(per_site)))
        ConceptSet([c for s in exp.sites for c in list(cs.select(site=s))[:k]]).save(refs["@top_pcs"])
        person = exp.person_pick.get(str(seed)) or exp.person_pick.get(seed)  # type: ignore[call-overload]
        if person:
            chosen = [c.name for s, idx in person.items() for j, c in enumerate(cs.select(site=s)) if j in idx]
            cs.select(chosen).save(refs["@person_pick"])
        info.update(probe_pick=picked, person_pick=person or None, per_site_probe_pick=per_site, scores=scores)
        _write_examples(dict(acts), cs, score_recs, folder / "examples.html")
    if needs_sae(exp):
        info["sae_pick"] = sae_concepts(exp, base, train_recs, score_recs, labels, folder, refs["@sae_pick"])
    rnd = ConceptSet()
    for i, s in enumerate(exp.sites):
        rnd = rnd + random_directions(s, base.d_model, k=k, seed=1000 * seed + i, model_id=exp.model)
    rnd.save(refs["@random"])
    info["k"] = k
    write_json_atomic(info_path, info)
    return {r: p for r, p in refs.items() if p.is_file()}, k, info


def needs_sae(exp: GeneralizationExperiment) -> bool:
    return any(v.get("caft_concepts") == "@sae_pick" for v in exp.methods.values())


def sae_concepts(exp, base: Workbench, train_recs, score_recs, labels: dict, folder: Path, path: Path) -> list[str]:
    """``@sae_pick``, CAFT's SAE route without OOD data: at every layer an SAE (sae-lens TopK) trained
    on the base model's activations of ``sae_n`` training examples (every token after the chat
    template's fixed prefix), its ``sae_top`` latents by attribution to the training loss (one
    backward pass for all layers), then the same automatic pick as ``@probe_pick``: the latents whose
    decoder direction separates the spurious attribute of the training prompts (at the first
    ``contrast_position``) better than the intended one. Saves the SAEs under ``sae/`` and the
    picked set to ``path``; returns the picked names."""
    from ..concepts import ConceptSet
    from ..concepts.latents import _top, latent_attributions
    from ..concepts.sae import train_sae
    from ..concepts.sae_data import common_prefix_length, row_positions
    from .selection import attribute_scores, probe_pick

    recs = [r for r in train_recs if r.response][: exp.sae_n]
    prompts, responses = [r.prompt for r in recs], [r.response for r in recs]
    acts = base.capture(prompts, exp.sites, position="all", responses=responses, progress=False)
    keep = row_positions(acts.record_index) >= common_prefix_length(base)
    saes = []
    for site in exp.sites:
        saes.append(train_sae(acts[site][keep], site=site, out=folder / "sae" / site, d_sae=exp.sae_width,
                              k=exp.sae_k, epochs=exp.sae_epochs, model_id=exp.model, progress=False))
    del acts
    attr = latent_attributions(saes, base, prompts, responses, batch_size=8)
    cs = ConceptSet()
    for w in saes:
        idx, vals = _top(attr[w.site], exp.sae_top, "abs")
        cs = cs + w.concepts(idx, vals, "sae_attribution", {"top": exp.sae_top, "loss": "response_nll"})
    pos = base.capture([r.prompt for r in score_recs], exp.sites, position=exp.contrast_positions[0], progress=False)
    scores = attribute_scores(cs, dict(pos), labels)
    picked_cs, picked = probe_pick(cs, scores, "spurious", "intended", exp.pick_min_score)
    picked_cs.for_ablation().save(path)
    write_json_atomic(folder / "sae_scores.json", {"scores": scores, "picked": picked,
                                             "sae_metrics": {w.site: w.metrics for w in saes}})
    return picked


def contrast_concepts(exp, base: Workbench, recs, spurious: list[int], path: Path):
    """``@contrast``: the spurious attribute's difference of means (group 1 minus group 0) on the base
    model's training prompts at each of ``contrast_positions``: that many directions per layer,
    orthonormalized. Recomputed when the file was made for other positions."""
    from ..concepts import ConceptSet, diff_means_between

    positions = exp.contrast_positions
    if path.is_file() and ConceptSet.load(path).meta.get("contrast_positions") == positions:
        return
    groups = [[r.prompt for r, y in zip(recs, spurious) if y == v] for v in (1, 0)]
    cs = ConceptSet(meta={"contrast_positions": positions})
    for j, pos in enumerate(positions):
        a = base.capture(groups[0], exp.sites, position=pos, progress=False)
        b = base.capture(groups[1], exp.sites, position=pos, progress=False)
        cs = cs + diff_means_between(a, b, exp.sites, label=f"{exp.attributes['spurious']} (difference of means at {pos})",
                                     name=f"contrast{j}")
    path.parent.mkdir(parents=True, exist_ok=True)
    cs.orthonormalize().save(path)


def _write_examples(acts: dict, cs, recs, path: Path, top: int = 6) -> None:
    """For a person's pick: per component, the training prompts whose last token (in the
    fine-tuned model) projects most and least on it."""
    import html

    parts = ["<html><meta charset='utf-8'><body style='font-family:sans-serif'>",
             "<h2>Top-activating training prompts per component (last prompt token)</h2>"]
    for site in cs.sites:
        for j, c in enumerate(cs.select(site=site)):
            proj = acts[site] @ c.direction
            order = proj.argsort(descending=True).tolist()
            parts.append(f"<h3>{html.escape(site)} component {j} (variance share {c.score:.3f})</h3><ul>")
            for tag, idx in (("+", order[:top]), ("-", order[-top:])):
                for i in idx:
                    sent = recs[i].prompt.split("\n")[1]
                    parts.append(f"<li>{tag} {proj[i]:.2f}: {html.escape(sent)} "
                                 f"(answer {html.escape(str(recs[i].meta.get('correct')))})</li>")
            parts.append("</ul>")
    path.write_text("\n".join(parts) + "</body></html>")


def evaluate_run(exp, run: Path | None, splits: dict, out_path: Path, leak_recs=None) -> dict:
    """Choice metrics of a run folder (None: the untouched model); CAFT runs also with the ablation
    kept at inference (``ablation_kept``) and the leakage check (``leak_recs``)."""
    from ..evals.choice import evaluate_choice
    from ..interventions import Ablate, Intervention
    from ..train import apply_run
    from .selection import leakage_check

    if out_path.is_file():
        return json.loads(out_path.read_text())
    wb = _load(exp)
    deployed = apply_run(run, wb) if run is not None else None
    res = {"run": str(run) if run else None, "metrics": evaluate_choice(wb, splits, hooks=deployed)}
    abl_dir = run / "caft_ablation" if run is not None else None
    ablate = Intervention.load(abl_dir) if abl_dir is not None and abl_dir.is_dir() else None
    if isinstance(ablate, Ablate) and exp.ablation_kept:
        res["metrics_ablation_kept"] = evaluate_choice(wb, splits, hooks=ablate)
    if isinstance(ablate, Ablate) and leak_recs:
        acts = wb.capture([r.prompt for r in leak_recs], ablate.sites, position="last", progress=False)
        res["leakage"] = leakage_check(dict(acts), ablate, attribute_labels(leak_recs, exp.attributes))
    write_json_atomic(out_path, res)
    return res


def run_generalization(path: str | Path, quick: bool = False, out: str | Path | None = None,
                       methods: list[str] | None = None, seeds: list[int] | None = None) -> Path:
    """Run (or resume) the experiment (``methods`` / ``seeds``: a subset of the file's); returns the
    path of ``report.html``."""
    from ..train.coca import write_jsonl
    from .report import write_reports

    t0 = time.time()
    exp = GeneralizationExperiment.from_yaml(path, quick=quick)
    if methods:
        unknown = [m for m in methods if m not in exp.methods]
        if unknown:
            raise GeneralizationError(f"unknown methods {unknown}; the file has {list(exp.methods)}")
        exp.methods = {m: exp.methods[m] for m in [PLAIN, *methods] if m in exp.methods}
    if seeds is not None:
        exp.seeds = list(seeds)
    out = Path(out or exp.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in dataclasses.asdict(exp).items() if k not in ("quick", "output_dir")}
    write_json_atomic(out / "experiment.json", settings)
    splits = {s: task_records(exp, s, 0) for s in ("id_test", "ood_test")}
    baseline = evaluate_run(exp, None, splits, out / "eval" / "baseline.json") if exp.baseline else None
    results: dict[str, Any] = {"settings": settings, "baseline": baseline, "seeds": {}}
    for seed in exp.seeds:
        train_recs = task_records(exp, "train", seed)
        write_jsonl(train_recs, out / "data" / f"train_{seed}.jsonl")
        leak = random.Random(seed).sample(train_recs, min(exp.leakage_n, len(train_recs))) if exp.leakage_n else None
        seed_res: dict[str, Any] = {}
        train_method(exp, PLAIN, seed, out, {}, 1)
        needs_concepts = any(m != PLAIN and v.get("finetuning_type") == "caft" for m, v in exp.methods.items())
        concepts, k, info = find_concepts(exp, seed, out, train_recs) if needs_concepts else ({}, 1, {})
        seed_res["concepts"] = {key: info.get(key) for key in ("k", "probe_pick", "person_pick", "per_site_probe_pick",
                                                                 "sae_pick")}
        for method, over in exp.methods.items():
            if over.get("caft_concepts") == "@person_pick" and "@person_pick" not in concepts:
                log.info(f"[experiment] seed {seed}: {method} skipped (no person_pick for this seed; pick "
                         f"components from {out}/concepts/{seed}/examples.html)")
                continue
            run = train_method(exp, method, seed, out, concepts, k)
            seed_res[method] = evaluate_run(exp, run, splits, out / "eval" / str(seed) / f"{method}.json", leak)
            seed_res[method]["summary"] = json.loads((run / "summary.json").read_text())
            log.info(f"[experiment] seed {seed} {method}: " + ", ".join(
                f"{s} {m['accuracy']:.3f}" for s, m in seed_res[method]["metrics"].items()))
        results["seeds"][str(seed)] = seed_res
    results["wall_s"] = round(time.time() - t0, 1)
    return write_reports(results, out)
