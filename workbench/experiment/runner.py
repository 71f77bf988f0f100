"""Run an experiment file: every step of one seed (:mod:`.steps`), or of several seeds each in its own
``seed{s}/`` folder with the results pooled over them; then the tables and the report."""

from __future__ import annotations

import dataclasses
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_json_atomic
from .._log import get_logger
from .config import BASELINE, Experiment, ExperimentError, check_same_settings, plan_training
from .steps import (
    CacheAndProbe,
    Deployed,
    Erasure,
    Evaluate,
    Judges,
    Lexical,
    Loaded,
    RefusalDirection,
    Step,
    Train,
    Transfer,
    TwinProbes,
    prompts_and_labels,
    run_steps,
)
from .tables import judges_table, loss_figure, pool_seeds, pool_train_info, probes_table, results_table

log = get_logger(__name__)


def run_seed(exp: Experiment, out: Path, quick: bool, source: str) -> dict[str, str]:
    """Every step of one seed into ``out``; returns ``{method: run folder}``."""
    out.mkdir(parents=True, exist_ok=True)
    plan, method_runs = plan_training(exp, out)  # fails early on recipes that do not chain
    settings = {"quick": quick, **dataclasses.asdict(exp)}
    check_same_settings(out / "experiment.json", settings)
    write_json_atomic(out / "experiment.json", {"source": source, **settings})
    base = Loaded(exp.model)
    train_prompts = partial(prompts_and_labels, exp, "train", exp.n_per_class)  # the store's records, in order
    steps: list[Step] = [CacheAndProbe(exp, out, base), Lexical(exp, out / "probes", train_prompts)]
    if exp.twin_probes:
        steps.append(TwinProbes(exp, out, base))
    run_steps([*steps, Judges(exp, out, base)])
    base.release()
    _log_best_probes(out)
    run_steps([Train(key, recipe) for key, recipe in plan.items()])
    for name, run_dir in [(BASELINE, None), *method_runs.items()]:
        model = Deployed(exp.model, run_dir)
        per_model: list[Step] = [Evaluate(exp, name, out, model), Erasure(exp, name, out, model)]
        if exp.transfer_templates:
            per_model.append(Transfer(exp, name, out, model))
        if run_dir and exp.refusal_direction:
            per_model.append(RefusalDirection(exp, name, out, model))
        run_steps(per_model)
        model.release()
    return method_runs


def _log_best_probes(out: Path) -> None:
    import pandas as pd

    for folder in ("probes", "probes_twins"):
        if (out / folder / "probes.csv").is_file():
            table = pd.read_csv(out / folder / "probes.csv")
            for _, row in table.sort_values("accuracy", ascending=False).groupby("kind").head(1).iterrows():
                log.info(f"[experiment]   {folder}: best {row['kind']} probe {row['site']} accuracy {row['accuracy']:.3f}")


def collect(out: Path, method_runs: dict[str, str]) -> tuple[dict[str, dict], dict[str, dict]]:
    """The finished files of one seed: ``({model: metrics + erasure [+ transfer, refusal]},
    {method: training summary})``."""
    from ..evals import load_metrics
    from ..train import coca

    results, train_info = {}, {}
    for name, run_dir in [(BASELINE, None), *method_runs.items()]:
        res: dict[str, Any] = {**load_metrics(out / "eval" / name / "eval.json"),
                               "erasure": json.loads((out / "erasure" / name / "erasure.json").read_text())}
        if "coca_adherence" in res["suites"]:  # derived from the stored samples (older folders have them too)
            res["suites"].update({**coca.adherence_breakdown(res["suites"]), **coca.decision_following(res["suites"])})
        for key, path in (("transfer", out / "transfer" / f"{name}.json"), ("refusal", out / "refusal" / f"{name}.json")):
            if path.is_file():
                res[key] = json.loads(path.read_text())
        results[name] = res
        if run_dir:
            train_info[name] = {**json.loads((Path(run_dir) / "summary.json").read_text()),
                                "tail_loss": tail_loss(run_dir)}
    return results, train_info


def tail_loss(run_dir: str | Path, last: int = 10) -> float | None:
    """Mean training loss of the run's last ``last`` logged steps (one step's loss is noisy), or None
    when it logged none."""
    from ..train import RunFolder

    losses = [r["loss"] for r in RunFolder(run_dir).metrics() if "loss" in r and "step" in r]
    return float(np.mean(losses[-last:])) if losses else None


def write_outputs(out: Path, results: dict, train_info: dict, paired: list[dict], judges: dict,
                  method_runs: dict[str, str], probe_folders: dict[str, Path], header: str) -> Path:
    """``results.md``, ``results.json``, ``report.html`` and ``losses.html`` in ``out``."""
    from ..evals import write_report
    from ..evals.paired import paired_table
    from ..plots import save_html

    table_md = "\n\n".join([header, results_table(results, train_info), judges_table(judges),
                            "Probe sweeps against what the words alone give (5-fold accuracy):\n\n"
                            + probes_table(probe_folders)])
    if paired:
        table_md += ("\n\nPaired tests (exact McNemar on the same prompts, seeds pooled, Holm-adjusted over every "
                     "row):\n\n" + paired_table(paired))
    (out / "results.md").write_text(table_md + "\n")
    (out / "results.json").write_text(json.dumps({"results": results, "train": train_info, "judges": judges,
                                                 "paired": paired}, indent=1, default=str))
    save_html(loss_figure(method_runs), out / "losses.html")
    erasure_rows = [[f"probe accuracy before / after LEACE ({row['site']})", "accuracy",
                     *[f"{r['erasure'][i]['accuracy_before']:.3f} / {r['erasure'][i]['accuracy_after']:.3f}"
                       for r in results.values()]]
                    for i, row in enumerate(next(iter(results.values()))["erasure"])]
    report = write_report(results, out, extra_rows=erasure_rows)
    log.info(table_md)
    return report


def run_experiment(path: str | Path, quick: bool = False, out: str | Path | None = None,
                   methods: list[str] | None = None, seeds: list[int] | None = None) -> Path:
    """Run every step (see the package docstring) for the file's ``seed``, or for each of ``seeds``
    (the argument or the file's) in ``out/seed{s}/`` with results pooled over them; returns the path
    of ``report.html``."""
    from ..evals.paired import paired_suite_tests

    exp = Experiment.from_yaml(path, quick=quick)
    if methods is not None:
        unknown = sorted(set(methods) - set(exp.methods))
        if unknown:
            raise ExperimentError(f"unknown methods {unknown}; the experiment has {sorted(exp.methods)}")
        exp.methods = {m: exp.methods[m] for m in methods}
    if seeds is not None:
        exp.seeds = list(seeds)
    out = Path(out or exp.output_dir)
    t0 = time.perf_counter()
    if not exp.seeds:
        method_runs = run_seed(exp, out, quick, str(path))
        results, train_info = collect(out, method_runs)
        paired = paired_suite_tests(results)
        header = f"Seed {exp.seed}; intervals: Wilson 95%."
        seed_dirs = [out]
    else:
        per_seed, per_train, seed_dirs, seed_runs = {}, {}, [], []
        for s in exp.seeds:
            folder = out / f"seed{s}"
            log.info(f"[experiment] seed {s} -> {folder}")
            seed_runs.append(run_seed(dataclasses.replace(exp, seed=s, seeds=[]), folder, quick, str(path)))
            per_seed[str(s)], per_train[str(s)] = collect(folder, seed_runs[-1])
            seed_dirs.append(folder)
        method_runs = seed_runs[0]  # the loss plot shows the first seed's runs
        results, train_info = pool_seeds(per_seed), pool_train_info(per_train)
        paired = paired_suite_tests(list(per_seed.values()))
        header = (f"Seeds {', '.join(map(str, exp.seeds))} (each its own training runs and test prompts); values pooled "
                  f"over seeds with one Wilson 95% interval, the per-seed range in brackets after it."
                  if len(exp.seeds) > 1 else f"Seed {exp.seeds[0]}; intervals: Wilson 95%.")
    judges = json.loads((seed_dirs[0] / "judges.json").read_text())
    probe_folders = {"length-matched (training prompts)": seed_dirs[0] / "probes",
                     "style-matched twins": seed_dirs[0] / "probes_twins"}
    report = write_outputs(out, results, train_info, paired, judges, method_runs, probe_folders, header)
    log.info(f"[experiment] done in {time.perf_counter() - t0:.0f}s; report: {report}")
    return report
