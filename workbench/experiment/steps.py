"""The experiment's steps, each a small object: ``done()`` reads the folder, ``run()`` makes the
step's files (the last file written marks it done), so an interrupted experiment resumes where it
stopped and a later version's new steps add their files to an old folder.

Per model (the untouched one and each method's), the evaluation steps share one loaded model
(:class:`Deployed`): suites, LEACE check, probe transfer to jailbreak-wrapped prompts and, for
trained models, the refusal direction.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .._files import write_json_atomic
from .._log import get_logger
from ..sites import expand_sites, site_name
from .config import Experiment, records, twin_records

if TYPE_CHECKING:
    import pandas as pd

    from ..activations import ActivationStore
    from ..model import Workbench

log = get_logger(__name__)


class Step:
    """One resumable piece of the experiment."""

    label: str = "step"

    def done(self) -> bool:
        raise NotImplementedError

    def run(self) -> None:
        raise NotImplementedError


def run_steps(steps: list[Step]) -> None:
    """Run every step that is not done, in order, saying which were skipped and how long each took."""
    for step in steps:
        if step.done():
            log.info(f"[experiment] {step.label}: already done")
            continue
        log.info(f"[experiment] {step.label}")
        t0 = time.perf_counter()
        step.run()
        log.info(f"[experiment] {step.label}: {time.perf_counter() - t0:.0f} s")


class Loaded:
    """The untouched model, loaded on first use and shared by the steps that need it."""

    def __init__(self, model: str):
        self.model_id, self._wb = model, None

    @property
    def wb(self) -> Workbench:
        if self._wb is None:
            from ..model import Workbench

            self._wb = Workbench.load(self.model_id)
        return self._wb

    def release(self) -> None:
        self._wb = None


class Deployed(Loaded):
    """A model as a method left it (``run_dir=None``: the untouched model), loaded on first use; LoFIT's
    head biases are folded into the weights (the hook-free generation path)."""

    def __init__(self, model: str, run_dir: str | None):
        super().__init__(model)
        self.run_dir, self._hooks = run_dir, None

    @property
    def hooks(self) -> Any:
        if self._hooks is None:
            from ..train import apply_run

            self._hooks = apply_run(self.run_dir, self.wb, fold_biases=True) if self.run_dir else {}
        return self._hooks

    @property
    def coca_variant(self) -> str | None:
        from ..train import RunFolder

        return RunFolder(self.run_dir).config["recipe"].get("coca_variant") if self.run_dir else None


# ---------------------------------------------------------------------------------- probes
def write_probe_sweep(store: ActivationStore, out: str | Path, n_folds: int = 5, seed: int = 0,
                      prompts: list[str] | None = None) -> pd.DataFrame:
    """Probe sweep over every site of ``store`` (heads split out) -> ``out/probes.csv`` (written last:
    it marks the step done), ``probe_accuracy.html`` and, with head sites, ``head_heatmap.html``.
    With ``prompts`` (the store's, in order) the bag-of-words baseline goes to ``lexical.json`` and
    onto the plot."""
    from ..plots import head_heatmap, probe_accuracy_plot, save_html
    from ..probes import probe_sweep, split_heads

    if (store.labels < 0).any():
        raise ValueError("the store has records without labels; probes need harmful/benign labels")
    table = probe_sweep(split_heads({s: store.load(s) for s in store.sites}), store.labels, n_folds=n_folds, seed=seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if prompts is not None:
        write_lexical(table, prompts, store.labels.tolist(), out, n_folds, seed)
    else:
        save_html(probe_accuracy_plot(table), out / "probe_accuracy.html")
    if bool((table["kind"] == "z").any()):
        save_html(head_heatmap(table), out / "head_heatmap.html")
    table.to_csv(out / "probes.csv", index=False)
    return table


def write_lexical(table: pd.DataFrame, prompts: list[str], labels: list[int], out: Path, n_folds: int,
                  seed: int) -> dict:
    """The bag-of-words baseline of a probe sweep (same prompts, same folds) -> ``lexical.json``, and
    ``probe_accuracy.html`` redrawn with it."""
    from ..plots import probe_accuracy_plot, save_html
    from ..probes import lexical_baseline

    lex = lexical_baseline(prompts, labels, n_folds=n_folds, seed=seed)
    save_html(probe_accuracy_plot(table, lexical=lex), out / "probe_accuracy.html")
    write_json_atomic(out / "lexical.json", lex)
    return lex


def _probe_sites(exp: Experiment, n_layers: int) -> list[str]:
    sites = expand_sites(exp.probe_sites, n_layers)
    return sites + [site_name(l) for l in exp.concept_layers if site_name(l) not in sites]


@dataclass
class CacheAndProbe(Step):
    """Activations of the length-matched train prompts, the probe sweep, and the difference-of-means
    ConceptSet at ``concept_layers`` (what CAFT recipes with ``caft_directions: diffmeans`` ablate)."""

    exp: Experiment
    out: Path
    model: Loaded
    label: str = "steps 1-3: activations, probe sweep, concepts"

    def done(self) -> bool:
        return (self.out / "probes" / "probes.csv").is_file() and (self.out / "concepts" / "harmful.safetensors").is_file()

    def run(self) -> None:
        from ..activations import ActivationStore
        from ..concepts import diff_means

        recs = records(self.exp, "train", self.exp.n_per_class)
        wb = self.model.wb
        store = ActivationStore.build(self.out / "activations", wb, [r.prompt for r in recs],
                                      _probe_sites(self.exp, wb.n_layers), position=self.exp.position,
                                      labels=[r.label for r in recs], ids=[r.id for r in recs])
        if not (self.out / "probes" / "probes.csv").is_file():
            write_probe_sweep(store, self.out / "probes", self.exp.folds, self.exp.seed, [r.prompt for r in recs])
        concepts = self.out / "concepts" / "harmful.safetensors"
        if not concepts.is_file():
            concepts.parent.mkdir(parents=True, exist_ok=True)
            diff_means(store, sites=[site_name(l) for l in self.exp.concept_layers], label="harmful - benign").save(concepts)


@dataclass
class Lexical(Step):
    """The bag-of-words baseline of a probe sweep made before it existed."""

    exp: Experiment
    folder: Path
    prompts_and_labels: Callable[[], tuple[list[str], list[int]]]
    label: str = "bag-of-words baseline"

    def done(self) -> bool:
        return (self.folder / "lexical.json").is_file()

    def run(self) -> None:
        import pandas as pd

        prompts, labels = self.prompts_and_labels()
        write_lexical(pd.read_csv(self.folder / "probes.csv"), prompts, labels, self.folder, self.exp.folds,
                      self.exp.seed)


@dataclass
class TwinProbes(Step):
    """The probe sweep on style-matched twins (``twins_harmful`` / ``twins_benign``, train split):
    each harmful request beside a benign one of the same form, so wording cannot carry the labels."""

    exp: Experiment
    out: Path
    model: Loaded
    label: str = "probe sweep on style-matched twins"

    def done(self) -> bool:
        return (self.out / "probes_twins" / "probes.csv").is_file()

    def run(self) -> None:
        from ..activations import ActivationStore

        recs = twin_records(self.exp, "train")
        wb = self.model.wb
        store = ActivationStore.build(self.out / "activations_twins", wb, [r.prompt for r in recs],
                                      expand_sites(self.exp.probe_sites, wb.n_layers), position=self.exp.position,
                                      labels=[r.label for r in recs], ids=[r.id for r in recs])
        write_probe_sweep(store, self.out / "probes_twins", self.exp.folds, self.exp.seed, [r.prompt for r in recs])


# ---------------------------------------------------------------------------------- training
@dataclass
class Train(Step):
    """One recipe of the plan (resumes from its last checkpoint)."""

    key: str
    recipe: Any

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"step 4: train {self.key} -> {self.recipe.output_dir}"

    def done(self) -> bool:
        return (Path(self.recipe.output_dir) / "summary.json").is_file()

    def run(self) -> None:
        from transformers.trainer_utils import get_last_checkpoint

        from ..train import train

        run_dir = Path(self.recipe.output_dir)
        resume = run_dir.is_dir() and get_last_checkpoint(str(run_dir)) is not None
        train(self.recipe.replace(overwrite_output_dir=True, resume_from_checkpoint=True if resume else None))


# ---------------------------------------------------------------------------------- evaluation
def judge_for(variant: str | None) -> tuple[Any, str]:
    """The refusal judge of a model and its name in ``eval.json`` (COCA models are judged on the answer
    after their reasoning). The name changes with the judge, so older files are judged again."""
    from ..evals import default_judge
    from ..train import coca

    name = "default with non-answers"  # 2026-12-03: content-free replies and unread encodings did not comply
    if variant in coca.REASONING_VARIANTS:
        return coca.answer_judge(default_judge()), f"{name} (answer part)"
    return default_judge(), name


@dataclass
class ModelStep(Step):
    """A step of one model's evaluation: its file is ``where`` (with ``{name}``) in the experiment folder."""

    exp: Experiment
    name: str
    out: Path
    model: Deployed
    where: ClassVar[str] = ""
    title: ClassVar[str] = ""

    @property
    def path(self) -> Path:
        return self.out / self.where.format(name=self.name)

    @property
    def label(self) -> str:  # type: ignore[override]
        return self.title.format(name=self.name)

    def done(self) -> bool:
        return self.path.is_file()


@dataclass
class Evaluate(ModelStep):
    """The safety suites of one model -> ``eval/{name}/eval.json``. A file judged by another judge
    (an earlier version's) is judged again from its stored generations, not regenerated."""

    where: ClassVar[str] = "eval/{name}/eval.json"
    title: ClassVar[str] = "step 5: evaluate {name}"

    def done(self) -> bool:
        if not self.path.is_file():
            return False
        data = json.loads(self.path.read_text())
        return data.get("judge") == judge_for(self.model.coca_variant)[1]

    def run(self) -> None:
        from ..evals import build_suites, evaluate, load_metrics, save_metrics
        from ..evals.suites import rejudge
        from ..train import coca

        variant = self.model.coca_variant
        judge, judge_name = judge_for(variant)
        reasons = variant in coca.REASONING_VARIANTS
        if self.path.is_file():
            metrics = rejudge(load_metrics(self.path)["suites"], judge)
        else:
            extra = coca.reasoning_budget(variant)
            wb = self.model.wb
            with wb.hooks(self.model.hooks):
                metrics = evaluate(wb, build_suites(self.exp.eval_size, self.exp.seed),
                                   max_new_tokens=self.exp.max_new_tokens + extra,
                                   gsm8k_tokens=self.exp.gsm8k_tokens + extra, judge=judge)
        if reasons:
            metrics["coca_adherence"] = coca.suite_adherence(metrics)
        save_metrics(metrics, self.path, self.exp.model, str(self.exp.eval_size), self.exp.seed, judge=judge_name)


def prompts_and_labels(exp: Experiment, split: str, n: int) -> tuple[list[str], list[int]]:
    """The prompts and labels of :func:`~.config.records` (same order)."""
    recs = records(exp, split, n)
    return [r.prompt for r in recs], [int(r.label or 0) for r in recs]


def _held_out(exp: Experiment) -> tuple[list[str], list[int]]:
    return prompts_and_labels(exp, "test", exp.erasure_n_per_class)


@dataclass
class Erasure(ModelStep):
    """Held-out probe accuracy before / after LEACE and the 1-D difference-of-means accuracy at
    ``erasure_layers`` -> ``erasure/{name}/erasure.json``."""

    where: ClassVar[str] = "erasure/{name}/erasure.json"
    title: ClassVar[str] = "step 6: LEACE check of {name}"

    def run(self) -> None:
        from ..erasure import erasure_check
        from ..probes import diff_means_separation

        prompts, labels = _held_out(self.exp)
        sites = [site_name(l) for l in self.exp.erasure_layers]
        wb = self.model.wb
        with wb.hooks(self.model.hooks):
            acts = wb.capture(prompts, sites, position=self.exp.position, progress=False)
        check = erasure_check(acts, labels, n_folds=self.exp.folds, seed=self.exp.seed).set_index("site")
        dm = diff_means_separation(acts, labels, n_folds=self.exp.folds, seed=self.exp.seed).set_index("site")
        write_json_atomic(self.path, [{"site": s, "n": len(labels), "accuracy_before": float(check.loc[s, "accuracy_before"]),
                                 "accuracy_after": float(check.loc[s, "accuracy_after"]),
                                 "diffmeans_accuracy": float(dm.loc[s, "accuracy"])} for s in sites])


@dataclass
class Transfer(ModelStep):
    """Does the harm signal survive jailbreak wrappers? A probe fit on the plain held-out prompts
    (harmful vs benign) scores the same prompts inside ``transfer_templates`` jailbreak templates, at
    ``erasure_layers`` -> ``transfer/{name}.json`` (accuracy, AUROC, harmful recall per site)."""

    where: ClassVar[str] = "transfer/{name}.json"
    title: ClassVar[str] = "step 7: probe transfer to jailbreak-wrapped prompts, {name}"

    def run(self) -> None:
        import numpy as np

        from ..data.jailbreaks import fill_template, templates
        from ..probes import fit_predict
        from ..stats import score_metrics

        prompts, labels = _held_out(self.exp)
        pool = templates(max_chars=1500)
        chosen = random.Random(self.exp.seed).sample(pool, min(self.exp.transfer_templates, len(pool)))
        wrapped = [fill_template(t.prompt, p) for t in chosen for p in prompts]
        wrapped_labels = np.asarray(labels * len(chosen))
        sites = [site_name(l) for l in self.exp.erasure_layers]
        wb = self.model.wb
        with wb.hooks(self.model.hooks):
            plain = wb.capture(prompts, sites, position=self.exp.position, progress=False)
            wrap = wb.capture(wrapped, sites, position=self.exp.position, progress=False)
        (scores,) = fit_predict({s: plain[s] for s in sites}, np.asarray(labels), [{s: wrap[s] for s in sites}])
        metrics = score_metrics(scores, wrapped_labels, seed=self.exp.seed).to_dict("records")  # one row per site
        harmful = wrapped_labels == 1
        write_json_atomic(self.path, {
            "templates": [t.id for t in chosen], "n_plain": len(prompts), "n_wrapped": len(wrapped),
            "sites": [{"site": s, "accuracy": float(metrics[i]["accuracy"]), "auroc": float(metrics[i]["auroc"]),
                       "harmful_recall": float((scores[i][harmful] > 0).mean())} for i, s in enumerate(sites)]})


@dataclass
class RefusalDirection(ModelStep):
    """Arditi et al.'s refusal direction of a trained model (``refusal_positions``; harmful
    AdvBench + HarmBench and harmless benign instructions, train / val splits), and its ID refusal
    rate with the direction ablated everywhere -> ``refusal/{name}.json``. How much of the learned
    refusal one direction carries: ``(refusal - ablated) / (refusal - untouched refusal)``. A COCA
    model that reasons first is recorded as not applicable (``{"skipped": why}``)."""

    n_train: int = 64
    n_val: int = 32
    where: ClassVar[str] = "refusal/{name}.json"
    title: ClassVar[str] = "step 8: refusal direction of {name}"

    def run(self) -> None:
        from ..concepts.refusal import directional_ablation, refusal_prompts, select_refusal_direction
        from ..evals import build_suites, run_suite
        from ..train import coca

        if self.model.coca_variant in coca.REASONING_VARIANTS:
            # the selection scores refusal by the first response token, which for these models is
            # always the reasoning's opening: not applicable, recorded as such
            write_json_atomic(self.path, {"skipped": "the model opens with COCA reasoning; the first-token "
                                                     "refusal score does not apply"})
            return
        sets = refusal_prompts(n_train=self.n_train, n_val=self.n_val, seed=self.exp.seed)
        wb = self.model.wb
        with wb.hooks(self.model.hooks):
            try:
                rd = select_refusal_direction(wb, *sets, positions=list(self.exp.refusal_positions), progress=False)
            except ValueError as err:  # no candidate passed the filters: a finding, recorded
                write_json_atomic(self.path, {"error": str(err)})
                return
            suite = build_suites(self.exp.eval_size, self.exp.seed)["id_harmful"]
            judge, _ = judge_for(self.model.coca_variant)
            extra = coca.reasoning_budget(self.model.coca_variant)
            with wb.hooks(directional_ablation(wb, rd.direction)):
                ablated = run_suite(wb, suite, max_new_tokens=self.exp.max_new_tokens + extra, judge=judge)
        rd.save(self.out / "refusal" / self.name)
        best = next(r for r in rd.scores if (r["position"], r["layer"]) == (rd.position, rd.layer))
        write_json_atomic(self.path, {"layer": rd.layer, "position": rd.position, "bypass": best["bypass"],
                                "induce": best["induce"], "kl": best["kl"], "baseline_scores": rd.baseline,
                                "refusal_ablated": {k: ablated[k] for k in ("value", "ci_low", "ci_high", "n")},
                                "samples_ablated": ablated["samples"][:10]})


@dataclass
class Judges(Step):
    """The refusal judges against people's labels -> ``judges.json``."""

    exp: Experiment
    out: Path
    model: Loaded
    label: str = "judges against human labels"

    def done(self) -> bool:
        return (self.out / "judges.json").is_file() and "default" in json.loads((self.out / "judges.json").read_text())

    def run(self) -> None:
        from ..evals import judge_report

        write_json_atomic(self.out / "judges.json", judge_report(self.model.wb, self.exp.seed))
