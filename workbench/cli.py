"""The ``workbench`` command.

    workbench demo [--out out/demo]                         the main job: the quick CAFT gender experiment
    workbench experiment [FILE.yaml] [--quick] [--out DIR]  safety.yaml: cache, probe, train, evaluate; caft_*.yaml: CAFT generalization
    workbench cache --out DIR [--model M] [--harmful advbench,harmbench] [--benign benign_instructions]
                    [--sites resid_post,z] [--position last] [--n-per-class N] [--split train] [--prompts FILE]
    workbench probe --store DIR --out DIR [--folds 5]       probe sweep -> table + HTML plots
    workbench sites [--model M]                             list valid site names
    workbench train RECIPE.yaml                             fine-tune (lora | full | lofit | caft) -> run folder
    workbench eval MODEL_OR_RUN [--size quick|full] [--prompts FILE] [--out DIR]   safety evaluation -> eval.json + report.html
    workbench report RUN_OR_EVAL... --out DIR               side-by-side comparison of evaluations
    workbench refusal-direction MODEL_OR_RUN --out DIR [--export DIR]   Arditi et al.'s refusal direction (+ ablated model)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import pandas as pd


def _records(args):
    from .data import harmful_vs_benign, load_prompt_file

    if args.prompts:
        return load_prompt_file(args.prompts)
    return harmful_vs_benign(harmful=args.harmful.split(","), benign=args.benign.split(","),
                             n_per_class=args.n_per_class, split=args.split, seed=args.seed,
                             match_lengths=True)


def cmd_cache(args, wb=None) -> Path:
    from . import ActivationStore, Workbench
    from .sites import expand_sites

    wb = wb or Workbench.load(args.model, backend=args.backend)
    records = _records(args)
    sites = expand_sites(args.sites, wb.n_layers)
    t0 = time.perf_counter()
    store = ActivationStore.build(args.out, wb, [r.prompt for r in records], sites, position=args.position,
                                  labels=[r.label for r in records], ids=[r.id for r in records],
                                  batch_size=args.batch_size)
    print(f"cached {len(records)} prompts x {len(sites)} sites in {time.perf_counter() - t0:.1f}s -> {store}")
    return Path(args.out)


def cmd_probe(args) -> Path:
    from . import ActivationStore
    from .experiment import write_probe_sweep

    store = ActivationStore(args.store)
    labels = store.labels
    t0 = time.perf_counter()
    table = write_probe_sweep(store, args.out, n_folds=args.folds, seed=args.seed)
    elapsed = time.perf_counter() - t0
    out = Path(args.out)
    best = table.sort_values("accuracy", ascending=False).groupby("kind").head(1)
    print(f"probe sweep: {len(table)} sites, {args.folds}-fold, {len(labels)} examples "
          f"({int(labels.sum())} harmful) in {elapsed:.1f}s")
    cols = ["site", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "auroc"]
    print(cast("pd.DataFrame", best[cols]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"table and plots in {out}/")
    return out


def default_experiment() -> Path:
    """``examples/safety.yaml`` of this checkout."""
    return Path(__file__).resolve().parents[1] / "examples" / "safety.yaml"


def cmd_experiment(args) -> Path:
    from .generalization.experiment import is_generalization_file, run_generalization

    methods = args.methods.split(",") if args.methods else None
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    if is_generalization_file(args.experiment):
        return run_generalization(args.experiment, quick=args.quick, out=args.out, methods=methods, seeds=seeds)
    from .experiment import run_experiment

    return run_experiment(args.experiment, quick=args.quick, out=args.out, methods=methods, seeds=seeds)


def demo_experiment() -> Path:
    """``examples/caft_gender.yaml`` of this checkout: the demo's experiment."""
    return Path(__file__).resolve().parents[1] / "examples" / "caft_gender.yaml"


def cmd_demo(args) -> Path:
    """The main job: the quick CAFT generalization experiment on the embedded model."""
    from .generalization.experiment import run_generalization

    report = run_generalization(demo_experiment(), quick=True, out=args.out)
    print(f"\nreport: {report}\nresults table: {Path(report).parent / 'results.md'}")
    return report


def cmd_sites(args) -> None:
    from . import Workbench

    print("\n".join(Workbench.load(args.model, backend=args.backend).sites))


def cmd_train(args) -> Path:
    from .train import run_recipe

    run_dir = run_recipe(args.recipe)
    print(f"run folder: {run_dir}")
    return Path(run_dir)


def _load_for_eval(target: str):
    """``(wb, interventions)`` for a model name / folder, or for a training run folder (its base
    model with the run applied; LoFIT's biases come back as interventions to keep installed)."""
    from . import Workbench

    folder = Path(target)
    if folder.is_dir() and ((folder / "metrics.jsonl").is_file() or (folder / "config.json").is_file()):
        from .train import apply_run, read_run_config

        wb = Workbench.load(read_run_config(folder)["model_id"])
        return wb, apply_run(folder, wb)
    return Workbench.load(target), {}


def cmd_refusal_direction(args) -> Path:
    """Arditi et al.'s refusal direction of a model or a run: select, save, optionally export."""
    from contextlib import nullcontext

    from .concepts.refusal import HARMFUL_DATASETS, HARMLESS_DATASETS, export_ablated, refusal_prompts, select_refusal_direction

    def names(arg: str | None, default: tuple[str, ...]) -> list[str]:
        return [n.strip() for n in arg.split(",") if n.strip()] if arg else list(default)

    sets = refusal_prompts(names(args.harmful, HARMFUL_DATASETS), names(args.harmless, HARMLESS_DATASETS),
                           args.n_train, args.n_val, args.max_chars, args.seed)
    wb, deployed = _load_for_eval(args.target)
    positions = [int(p) for p in args.positions.split(",")] if args.positions != "all" else None
    with wb.hooks(deployed) if deployed else nullcontext():
        rd = select_refusal_direction(wb, *sets, kl_max=args.kl_max, positions=positions,
                                      prune_layers=args.prune_layers, induce_min=args.induce_min)
    out = rd.save(args.out)
    best = next(r for r in rd.scores if (r["position"], r["layer"]) == (rd.position, rd.layer))
    print(f"refusal direction: layer {rd.layer}, post-instruction position {rd.position}; refusal score on harmful "
          f"prompts {rd.baseline['harmful']:.2f} -> {best['bypass']:.2f} ablated; on harmless "
          f"{rd.baseline['harmless']:.2f} -> {best['induce']:.2f} added; KL {best['kl']:.3f} -> {out}")
    if args.export:
        if deployed:
            raise ValueError("--export folds the ablation into plain weights; this run keeps hooks at inference "
                             "(LoFIT) that a plain model folder cannot hold")
        print(f"exported: {export_ablated(wb, rd.direction, args.export)}")
    return out


def cmd_eval(args) -> Path:
    from .evals import build_suites, evaluate, load_metrics, save_metrics, write_report

    suites = {}
    if args.prompts:
        from .data import load_prompt_file
        from .evals import prompt_suites

        suites = prompt_suites(load_prompt_file(args.prompts), Path(args.prompts).stem)
    if not args.only_prompts:
        suites = {**build_suites(args.size, args.seed), **suites}
    elif not suites:
        raise ValueError("--only-prompts needs --prompts FILE")
    wb, deployed = _load_for_eval(args.target)
    out = Path(args.out or (Path(args.target) / "eval" if Path(args.target).is_dir() else Path("out/eval") / args.target))
    t0 = time.perf_counter()
    with wb.hooks(deployed):
        metrics = evaluate(wb, suites, max_new_tokens=args.max_new_tokens)
    path = save_metrics(metrics, out / "eval.json", wb.model_id, args.size, args.seed)
    report = write_report({Path(args.target).name: load_metrics(path)}, out)
    for name, m in metrics.items():
        print(f"  {name:14s} {m['metric']:20s} {m['value']:.3f}  [{m['ci_low']:.3f}, {m['ci_high']:.3f}]  n={m['n']}")
    print(f"evaluated in {time.perf_counter() - t0:.0f}s -> {path}, {report}")
    return out


def cmd_report(args) -> Path:
    from .evals import load_metrics, write_report

    runs = {}
    for target in args.runs:
        p = Path(target)
        runs[p.name if p.name != "eval" else p.parent.name] = load_metrics(p / "eval" if (p / "eval").is_dir() else p)
    path = write_report(runs, args.out)
    print(f"report -> {path}")
    return path


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's help ends with its default (where it has one); descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or action.required:
            return action.help or ""
        return super()._get_help_string(action) or ""  # argparse's never returns None (typeshed says str | None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command's parser. Building it imports no torch (``workbench --help`` answers at once);
    the flags of ``sae train`` come from :mod:`workbench.concepts.sae` and load only when the
    command line asks for ``sae``."""
    from .backends import BACKENDS
    from .data.splits import SPLITS
    from .models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="workbench", description=__doc__, formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str):
        return sub.add_parser(name, help=help, description=help, formatter_class=_Help)

    def data_args(p):
        p.add_argument("--model", default=DEFAULT_MODEL, help="embedded model name, tiny-llama, or a Hugging Face id")
        p.add_argument("--backend", default=BACKENDS[0], choices=BACKENDS, help="model-wrapping backend")
        p.add_argument("--harmful", default="advbench,harmbench", help="comma-separated harmful datasets")
        p.add_argument("--benign", default="benign_instructions,donotanswer_sensitive",
                       help="comma-separated benign datasets")
        p.add_argument("--n-per-class", type=int, default=None, help="prompts per class (default: all, balanced)")
        p.add_argument("--split", default=None, choices=SPLITS, help="dataset split (default: every record)")
        p.add_argument("--sites", default="resid_post,z",
                       help="comma-separated sites or families (resid_pre, resid_mid, resid_post, attn_out, mlp_out, z)")
        p.add_argument("--position", default="last", help="last, mean, all, or token:WORD")
        p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
        p.add_argument("--seed", type=int, default=0, help="seed for sampling and length matching")
        p.add_argument("--prompts", default=None, help="your own prompts instead of the datasets: a .jsonl or .csv "
                       "file with a prompt and a label (harmful/benign) column")

    demo = command("demo", "the main job: the quick CAFT generalization experiment (gender pronouns) on the embedded model")
    demo.add_argument("--out", default="out/demo", help="experiment folder")
    demo.set_defaults(func=cmd_demo)
    exp = command("experiment", "an experiment file: the safety comparison (examples/safety.yaml) or a CAFT "
                  "generalization experiment (examples/caft_gender.yaml, a file with a task: key)")
    exp.add_argument("experiment", nargs="?", default=str(default_experiment()), help="the experiment's YAML file")
    exp.add_argument("--quick", action="store_true", help="the experiment file's quick sizes (minutes)")
    exp.add_argument("--out", default=None, help="experiment folder (default: the file's output_dir)")
    exp.add_argument("--methods", default=None, help="comma-separated subset of the file's methods (default: all)")
    exp.add_argument("--seeds", default=None, help="comma-separated seeds instead of the file's (safety experiments: "
                     "each seed in DIR/seed{s}/, results pooled)")
    exp.set_defaults(func=cmd_experiment)
    cache = command("cache", "cache activations of harmful vs benign prompts to disk")
    data_args(cache)
    cache.add_argument("--out", required=True, help="activation store folder (resumes if it exists)")
    cache.set_defaults(func=cmd_cache)
    probe = command("probe", "probe sweep over every site of an activation store")
    probe.add_argument("--store", required=True, help="activation store folder (from workbench cache)")
    probe.add_argument("--out", required=True, help="folder for the table and the HTML plots")
    probe.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    probe.add_argument("--seed", type=int, default=0, help="fold assignment seed")
    probe.set_defaults(func=cmd_probe)
    sites = command("sites", "list valid site names")
    sites.add_argument("--model", default=DEFAULT_MODEL, help="model whose sites to list")
    sites.add_argument("--backend", default=BACKENDS[0], choices=BACKENDS, help="model-wrapping backend")
    sites.set_defaults(func=cmd_sites)
    train = command("train", "fine-tune from a LLaMA-Factory-style YAML recipe (lora | full | lofit | caft)")
    train.add_argument("recipe", help="the recipe's YAML file (examples/recipes/)")
    train.set_defaults(func=cmd_train)
    sae = command("sae", "sparse autoencoders (sae-lens) on cached activations")
    sae_sub = sae.add_subparsers(dest="sae_command", required=True, metavar="SAE_COMMAND")
    sae_train = sae_sub.add_parser("train", help="train an SAE (progress bar); writes cfg.json, "
                                   "sae_weights.safetensors, workbench.json", formatter_class=_Help)
    if argv is None or (argv[:1] == ["sae"]):
        from .concepts.sae_cli import add_train_arguments, run_train

        add_train_arguments(sae_train).set_defaults(func=run_train)
    rdir = command("refusal-direction", "find the refusal direction of a model or a training run (Arditi et al. "
                   "2024: difference of means, selected by bypass / induce / KL) and optionally export the model "
                   "with it ablated")
    rdir.add_argument("target", help="a model name or a training run folder")
    rdir.add_argument("--out", required=True, help="folder for direction.safetensors and direction.json (every "
                      "candidate's scores)")
    rdir.add_argument("--harmful", default=None, help="comma-separated harmful datasets (default: advbench,harmbench)")
    rdir.add_argument("--harmless", default=None, help="comma-separated harmless datasets (default: benign_instructions)")
    rdir.add_argument("--n-train", type=int, default=64, help="prompts per class for the means (train split)")
    rdir.add_argument("--n-val", type=int, default=32, help="prompts per class for the scores (val split)")
    rdir.add_argument("--positions", default="-1", help="post-instruction positions to try (--positions=-2,-1), comma-separated "
                      "negative indices, or 'all' (3 passes over the validation prompts per position and layer)")
    rdir.add_argument("--kl-max", type=float, default=0.1, help="largest KL on harmless prompts when ablated")
    rdir.add_argument("--max-chars", type=int, default=300, help="longest prompt used (characters)")
    rdir.add_argument("--seed", type=int, default=0, help="prompt sampling seed (the experiment's seed gives its "
                      "step's prompts)")
    rdir.add_argument("--induce-min", type=float, default=0.0, help="smallest refusal score on harmless prompts "
                      "with the direction added")
    rdir.add_argument("--prune-layers", type=float, default=0.2, help="fraction of the last layers left out")
    rdir.add_argument("--export", default=None, help="also save a plain Hugging Face model folder with the "
                      "direction folded out of the weights")
    rdir.set_defaults(func=cmd_refusal_direction)
    ev = command("eval", "safety evaluation of a model or a training run")
    ev.add_argument("target", help="a model name or a training run folder")
    ev.add_argument("--size", default="quick", choices=["quick", "full"], help="prompts per suite")
    ev.add_argument("--seed", type=int, default=0, help="prompt sampling seed")
    ev.add_argument("--max-new-tokens", type=int, default=48, help="generated tokens per answer")
    ev.add_argument("--out", default=None, help="output folder (default: TARGET/eval for a run, else out/eval/NAME)")
    ev.add_argument("--prompts", default=None, help="also evaluate your own prompts: a .jsonl or .csv file with a "
                    "prompt and a label (harmful/benign) column -> refusal / compliance rates in the same report")
    ev.add_argument("--only-prompts", action="store_true", help="evaluate only the --prompts file")
    ev.set_defaults(func=cmd_eval)
    rep = command("report", "compare evaluations side by side")
    rep.add_argument("runs", nargs="+", help="run folders or eval.json files")
    rep.add_argument("--out", required=True, help="folder for report.html and results.md")
    rep.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        args.func(args)
    except (ValueError, KeyError, FileNotFoundError, ImportError) as err:
        print(f"workbench: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
