"""The end-to-end experiment: one command from the untouched model to a comparison report.

    workbench experiment examples/safety.yaml [--quick] [--out DIR]

It answers the COCA question on one model: did the intervention change how the model represents
and acts on harmful requests, does it hold against jailbreaks it never saw, and what did it cost?
Steps, each writing a folder of the experiment folder (a finished step is skipped when the
experiment runs again, so an interrupted experiment resumes where it stopped):

1. ``activations/``: harmful vs benign prompts (train split) -> :class:`~workbench.ActivationStore`;
2. ``probes/``: the linear-probe sweep over every cached site (table + plotly plots);
3. ``concepts/``: the difference-of-means ConceptSet at ``concept_layers``; CAFT recipes that ask for
   ``caft_directions: diffmeans`` and name no ``caft_concepts`` ablate these;
4. ``train/``: every method's recipes, in order (a method is a chain: LoFIT = head selection, then
   bias tuning); ``output_dir``, ``lofit_heads_path`` and ``warm_start_from`` are rewired into the
   experiment folder, ``train_overrides`` applied to each;
5. ``eval/{run}/``: the safety suites (:mod:`workbench.evals`) for the untouched model and each method;
6. ``erasure/{run}/``: on held-out (test split) prompts, probe accuracy at ``erasure_layers``
   before and after LEACE, and the 1-D difference-of-means accuracy (how concentrated the concept is);
7. ``judges.json``: the refusal judges' precision / recall against UncensorBench's human labels;
8. ``report.html`` (every suite, every run, with samples), ``results.md`` and ``results.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._log import get_logger
from .models import DEFAULT_MODEL
from .sites import expand_sites, site_name

if TYPE_CHECKING:
    import pandas as pd

log = get_logger(__name__)

BASELINE = "baseline"
SUMMARY_ROWS = [("id_harmful", "refusal rate (ID harmful)"), ("ood_template", "attack success: templates"),
                ("ood_gcg", "attack success: GCG suffixes"), ("ood_encoding", "attack success: encodings"),
                ("benign", "benign compliance"), ("overrefusal", "over-refusal"), ("gsm8k", "GSM8K exact match"),
                ("mmlu", "MMLU accuracy"), ("perplexity", "perplexity (benign answers)"),
                ("coca_adherence", "COCA format adherence (generations)")]


class ExperimentError(ValueError):
    """An experiment file with an unknown key, a wrong-typed value or recipes that do not chain."""


@dataclass
class Experiment:
    """One experiment file (YAML). ``quick`` holds the keys ``--quick`` replaces."""

    output_dir: str = "runs/experiment"
    model: str = DEFAULT_MODEL
    seed: int = 0
    # activations, probes, concepts
    harmful: list[str] = field(default_factory=lambda: ["advbench", "harmbench"])
    benign: list[str] = field(default_factory=lambda: ["benign_instructions", "donotanswer_sensitive"])
    n_per_class: int = 100
    probe_sites: str = "resid_post,z"
    position: str = "last"
    folds: int = 5
    concept_layers: list[int] = field(default_factory=lambda: [10, 15, 20])
    # training: method name -> recipe paths run in order (the last one is the method's model)
    methods: dict[str, list[str]] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    # evaluation
    eval_size: Any = "quick"
    max_new_tokens: int = 48
    gsm8k_tokens: int = 256
    erasure_layers: list[int] = field(default_factory=lambda: [10, 15, 20])
    erasure_n_per_class: int = 48
    quick: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, source: str = "experiment", quick: bool = False) -> Experiment:
        from ._files import settings_from_dict

        data = settings_from_dict(cls, data, source, ExperimentError, quick, untyped=("eval_size",))
        exp = cls(**data)
        exp.methods = {name: [recipes] if isinstance(recipes, str) else list(recipes)
                       for name, recipes in exp.methods.items()}
        if BASELINE in exp.methods:
            raise ExperimentError(f"{source}: {BASELINE!r} is the untouched model; give the method another name")
        return exp

    @classmethod
    def from_yaml(cls, path: str | Path, quick: bool = False) -> Experiment:
        from ._files import read_yaml_file

        path = Path(path)
        exp = cls.from_dict(read_yaml_file(path, ExperimentError) or {}, source=str(path), quick=quick)
        # recipe paths are relative to the experiment file
        exp.methods = {m: [str(path.parent / p) for p in paths] for m, paths in exp.methods.items()}
        return exp


def _norm(path: str | Path) -> str:
    from .train.methods import Rewiring

    return Rewiring.key(path)


def plan_training(exp: Experiment, out: Path) -> tuple[dict, dict[str, str]]:
    """Rewire every recipe into ``out/train/``: ``({recipe path: Recipe}, {method: run folder})``.

    A recipe shared by several methods (LoFIT's head selection) runs once. ``warm_start_from`` and a
    phase v ``lofit_heads_path`` must point at the run of a recipe listed before it."""
    from .train import RecipeError, load_recipe
    from .train.methods import Rewiring, method_class

    plan, moved, method_runs = {}, {}, {}
    for method, paths in exp.methods.items():
        if not paths:
            raise ExperimentError(f"method {method!r} lists no recipe")
        for path in paths:
            key = _norm(path)
            if key not in plan:
                recipe = load_recipe(path)
                name = "/".join(Path(key).with_suffix("").parts[-2:])
                new_dir = out / "train" / name
                changes = {"output_dir": str(new_dir), "model_name_or_path": exp.model, **exp.train_overrides}
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


def _records(exp: Experiment, split: str, n: int):
    from .data import harmful_vs_benign

    return harmful_vs_benign(harmful=exp.harmful, benign=exp.benign, n_per_class=n, split=split, seed=exp.seed,
                             match_lengths=True)


def write_probe_sweep(store, out: str | Path, n_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Probe sweep over every site of ``store`` (heads split out) -> ``out/probes.csv`` (written last:
    it marks the step done), ``probe_accuracy.html`` and, with head sites, ``head_heatmap.html``."""
    from .plots import head_heatmap, probe_accuracy_plot, save_html
    from .probes import probe_sweep, split_heads

    if (store.labels < 0).any():
        raise ValueError("the store has records without labels; probes need harmful/benign labels")
    table = probe_sweep(split_heads({s: store.load(s) for s in store.sites}), store.labels, n_folds=n_folds, seed=seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_html(probe_accuracy_plot(table), out / "probe_accuracy.html")
    if bool((table["kind"] == "z").any()):
        save_html(head_heatmap(table), out / "head_heatmap.html")
    table.to_csv(out / "probes.csv", index=False)
    return table


def cache_and_probe(exp: Experiment, wb, out: Path) -> pd.DataFrame:
    """Steps 1-3. Returns the probe table."""
    import pandas as pd

    from . import ActivationStore
    from .concepts import diff_means

    records = _records(exp, "train", exp.n_per_class)
    sites = expand_sites(exp.probe_sites, wb.n_layers)
    for l in exp.concept_layers:  # the concept sites are cached too
        if site_name(l) not in sites:
            sites.append(site_name(l))
    store = ActivationStore.build(out / "activations", wb, [r.prompt for r in records], sites,
                                  position=exp.position, labels=[r.label for r in records],
                                  ids=[r.id for r in records])
    table_path = out / "probes" / "probes.csv"
    table = pd.read_csv(table_path) if table_path.is_file() else write_probe_sweep(store, out / "probes", exp.folds,
                                                                                   exp.seed)
    concepts = out / "concepts" / "harmful.safetensors"
    if not concepts.is_file():
        concepts.parent.mkdir(parents=True, exist_ok=True)
        cs = diff_means(store, sites=[site_name(l) for l in exp.concept_layers],
                        label="harmful - benign")
        cs.save(concepts)
    return table


def erasure(exp: Experiment, wb, out: Path, hooks=None) -> list[dict]:
    """Step 6 for one model: held-out probe accuracy before / after LEACE, diff-of-means accuracy."""
    from .erasure import erasure_check
    from .probes import diff_means_separation

    path = out / "erasure.json"
    if path.is_file():
        return json.loads(path.read_text())
    records = _records(exp, "test", exp.erasure_n_per_class)
    sites = [site_name(l) for l in exp.erasure_layers]
    with wb.hooks(hooks or {}):
        acts = wb.capture([r.prompt for r in records], sites, position=exp.position, progress=False)
    labels = [r.label for r in records]
    check = erasure_check(acts, labels, n_folds=exp.folds, seed=exp.seed).set_index("site")
    dm = diff_means_separation(acts, labels, n_folds=exp.folds, seed=exp.seed).set_index("site")
    rows = [{"site": s, "n": len(labels), "accuracy_before": float(check.loc[s, "accuracy_before"]),
             "accuracy_after": float(check.loc[s, "accuracy_after"]),
             "diffmeans_accuracy": float(dm.loc[s, "accuracy"])} for s in sites]
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
    return rows


def evaluate_run(exp: Experiment, name: str, run_dir: str | None, out: Path) -> dict:
    """Steps 5 and 6 for the untouched model (``run_dir=None``) or one training run."""
    from .evals import SubstringJudge, build_suites, evaluate, load_metrics, save_metrics
    from .model import Workbench
    from .train import RunFolder, apply_run, coca

    eval_path = out / "eval" / name / "eval.json"
    erasure_dir = out / "erasure" / name
    if eval_path.is_file() and (erasure_dir / "erasure.json").is_file():
        return {**load_metrics(eval_path), "erasure": erasure(exp, None, erasure_dir)}
    wb = Workbench.load(exp.model)
    deployed = apply_run(run_dir, wb) if run_dir else {}
    if not eval_path.is_file():
        # a COCA model reasons before it answers: more tokens, the judge reads the answer, adherence
        variant = RunFolder(run_dir).config["recipe"].get("coca_variant") if run_dir else None
        reasons = variant in coca.REASONING_VARIANTS
        extra = coca.reasoning_budget(variant)
        with wb.hooks(deployed):
            metrics = evaluate(wb, build_suites(exp.eval_size, exp.seed), max_new_tokens=exp.max_new_tokens + extra,
                               gsm8k_tokens=exp.gsm8k_tokens + extra,
                               judge=coca.answer_judge(SubstringJudge()) if reasons else None)
        if reasons:
            metrics["coca_adherence"] = coca.suite_adherence(metrics)
        save_metrics(metrics, eval_path, wb.model_id, str(exp.eval_size), exp.seed)
    result = load_metrics(eval_path)
    result["erasure"] = erasure(exp, wb, erasure_dir, deployed)
    return result


def _cell(m: dict) -> str:
    v = m.get("value", float("nan"))
    if m.get("metric") == "perplexity":
        return f"{v:.2f}"
    return f"{v:.2f} [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"


def results_table(results: dict[str, dict], train_info: dict[str, dict]) -> str:
    """A markdown table: one row per metric, one column per run."""
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for suite, label in SUMMARY_ROWS:  # a row any run has (COCA's adherence: COCA runs only)
        if any(suite in r["suites"] for r in results.values()):
            lines.append(f"| {label} | " + " | ".join(_cell(results[n]["suites"][suite]) if suite in results[n]["suites"]
                                                       else "–" for n in names) + " |")
    sites = [row["site"] for row in next(iter(results.values()))["erasure"]]
    for i, site in enumerate(sites):
        layer = site.split(".")[1]
        for key, label in (("accuracy_before", f"probe accuracy, layer {layer}"),
                           ("accuracy_after", f"probe accuracy after LEACE, layer {layer}"),
                           ("diffmeans_accuracy", f"1-D diff-of-means accuracy, layer {layer}")):
            lines.append(f"| {label} | " + " | ".join(f"{results[n]['erasure'][i][key]:.2f}" for n in names) + " |")
    for key, label in (("n_trainable", "trainable parameters"), ("steps", "training steps"),
                       ("last_loss", "final training loss"), ("wall_s", "training time (s)")):
        cells = [train_info.get(n, {}).get(key) for n in names]
        fmt = [("–" if c is None else f"{c:,}" if isinstance(c, int) else f"{c:.3g}") for c in cells]
        lines.append(f"| {label} | " + " | ".join(fmt) + " |")
    return "\n".join(lines)


def judges_table(judges: dict[str, dict]) -> str:
    """Markdown: each refusal judge's precision / recall against human labels."""
    lines = ["| refusal judge (UncensorBench test split, human labels) | precision | recall | accuracy | n |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['accuracy']:.3f} | {s['n']} |"
              for name, s in judges.items()]
    return "\n".join(lines)


def _check_same_settings(path: Path, settings: dict) -> None:
    """Finished steps are reused by file presence: refuse a folder made with other settings
    (e.g. ``--quick`` then the full size) instead of mixing their results. Methods may differ."""
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    changed = sorted(k for k in settings if k != "methods" and old.get(k) != json.loads(json.dumps(settings[k])))
    if changed:
        raise ExperimentError(f"{path.parent} holds an experiment run with other settings ({', '.join(changed)}); "
                              f"give another --out or remove the folder")


def run_experiment(path: str | Path, quick: bool = False, out: str | Path | None = None,
                   methods: list[str] | None = None) -> Path:
    """Run every step (see the module docstring); returns the path of ``report.html``."""
    from .evals import write_report
    from .model import Workbench
    from .train import train

    exp = Experiment.from_yaml(path, quick=quick)
    if methods is not None:
        unknown = sorted(set(methods) - set(exp.methods))
        if unknown:
            raise ExperimentError(f"unknown methods {unknown}; the experiment has {sorted(exp.methods)}")
        exp.methods = {m: exp.methods[m] for m in methods}
    out = Path(out or exp.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan, method_runs = plan_training(exp, out)  # fails early on recipes that do not chain
    settings = {"quick": quick, **dataclasses.asdict(exp)}
    _check_same_settings(out / "experiment.json", settings)
    (out / "experiment.json").write_text(json.dumps({"source": str(path), **settings}, indent=1))
    t0 = time.perf_counter()
    wb = Workbench.load(exp.model)
    log.info(f"[experiment] {wb}; steps 1-3: activations, probe sweep, concepts")
    table = cache_and_probe(exp, wb, out)
    best = table.sort_values("accuracy", ascending=False).groupby("kind").head(1)
    for _, row in best.iterrows():
        log.info(f"[experiment]   best {row['kind']} probe: {row['site']} accuracy {row['accuracy']:.3f}")
    del wb

    for key, recipe in plan.items():
        if (Path(recipe.output_dir) / "summary.json").is_file():
            log.info(f"[experiment] step 4: {key} already trained in {recipe.output_dir}")
            continue
        from transformers.trainer_utils import get_last_checkpoint

        run_dir = Path(recipe.output_dir)
        resume = run_dir.is_dir() and get_last_checkpoint(str(run_dir)) is not None
        log.info(f"[experiment] step 4: train {key} -> {run_dir}{' (resuming)' if resume else ''}")
        train(recipe.replace(overwrite_output_dir=True, resume_from_checkpoint=True if resume else None))

    results, train_info = {}, {}
    for name, run_dir in [(BASELINE, None), *method_runs.items()]:
        log.info(f"[experiment] steps 5-6: evaluate {name}")
        results[name] = evaluate_run(exp, name, run_dir, out)
        if run_dir:
            train_info[name] = json.loads((Path(run_dir) / "summary.json").read_text())

    judges_path = out / "judges.json"
    if not judges_path.is_file():
        from .evals import judge_report

        judges_path.write_text(json.dumps(judge_report(Workbench.load(exp.model), exp.seed), indent=1))
    judges = json.loads(judges_path.read_text())
    from .evals.paired import paired_suite_tests, paired_table

    paired = paired_suite_tests(results)
    table_md = results_table(results, train_info) + "\n\n" + judges_table(judges)
    if paired:
        table_md += ("\n\nPaired tests (exact McNemar on the same prompts, Holm-adjusted over every row):\n\n"
                     + paired_table(paired))
    (out / "results.md").write_text(table_md + "\n")
    (out / "results.json").write_text(json.dumps({"results": results, "train": train_info, "judges": judges,
                                                 "paired": paired}, indent=1, default=str))
    erasure_rows = [[f"probe accuracy before / after LEACE ({row['site']})", "accuracy",
                     *[f"{r['erasure'][i]['accuracy_before']:.3f} / {r['erasure'][i]['accuracy_after']:.3f}"
                       for r in results.values()]]
                    for i, row in enumerate(next(iter(results.values()))["erasure"])]
    report = write_report(results, out, extra_rows=erasure_rows)
    log.info(table_md)
    log.info(f"[experiment] done in {time.perf_counter() - t0:.0f}s; report: {report}")
    return report
