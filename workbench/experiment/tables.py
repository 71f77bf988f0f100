"""What the experiment's files say, as tables: per-model results (one seed, or pooled over seeds),
the judges, probe transfer, the refusal direction, the probe sweeps against their lexical baseline,
and the training losses."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..stats import wilson_interval

SUMMARY_ROWS = [("id_harmful", "refusal rate (ID harmful)"), ("ood_template", "attack success: templates"),
                ("ood_gcg", "attack success: GCG suffixes"), ("ood_encoding", "attack success: encodings"),
                ("benign", "benign compliance"), ("overrefusal", "over-refusal"), ("gsm8k", "GSM8K exact match"),
                ("mmlu", "MMLU accuracy"), ("perplexity", "perplexity (benign answers)"),
                ("coca_adherence", "COCA format adherence (generations)"),
                ("coca_adherence_readable", "COCA adherence without the encodings"),
                ("coca_adherence_wrapped", "COCA adherence on templates + GCG"),
                ("coca_followed", "COCA: the answer follows the decision"),
                ("coca_harmful_safe", "COCA: harmful prompts decided safe"),
                ("coca_help_refused", "COCA: benign, decided to answer, then refused")]


def _cell(m: dict) -> str:
    v = m.get("value", float("nan"))
    if m.get("metric") == "perplexity":
        return f"{v:.2f}"
    txt = f"{v:.2f} [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"
    if len(m.get("per_seed", [])) > 1:
        txt += f" ({min(m['per_seed']):.2f}-{max(m['per_seed']):.2f})"
    return txt


def _row(label: str, cells: list[str]) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def results_table(results: dict[str, dict], train_info: dict[str, dict]) -> str:
    """A markdown table: one row per metric, one column per run. Pooled results (:func:`pool_seeds`)
    show the per-seed range after the interval."""
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for suite, label in SUMMARY_ROWS:  # a row any run has (COCA's adherence: COCA runs only)
        if any(suite in r["suites"] for r in results.values()):
            lines.append(_row(label, [_cell(results[n]["suites"][suite]) if suite in results[n]["suites"] else "–"
                                      for n in names]))
    sites = [row["site"] for row in next(iter(results.values()))["erasure"]]
    for i, site in enumerate(sites):
        layer = site.split(".")[1]
        for key, label in (("accuracy_before", f"probe accuracy, layer {layer}"),
                           ("accuracy_after", f"probe accuracy after LEACE, layer {layer}"),
                           ("diffmeans_accuracy", f"1-D diff-of-means accuracy, layer {layer}")):
            lines.append(_row(label, [f"{results[n]['erasure'][i][key]:.2f}" for n in names]))
    for i, site in enumerate(sites):
        cells = [results[n].get("transfer", {}).get("sites", []) for n in names]
        if any(cells):
            layer = site.split(".")[1]
            for key, label in (("accuracy", f"probe transfer to jailbreak-wrapped prompts: accuracy, layer {layer}"),
                               ("harmful_recall", f"probe transfer: wrapped harmful flagged, layer {layer}")):
                lines.append(_row(label, [f"{c[i][key]:.2f}" if len(c) > i else "–" for c in cells]))
    refusal = [results[n].get("refusal") for n in names]
    if any(refusal):
        lines.append(_row("refusal direction (layer, position)",
                          [f"{r['layer']}, {r['position']}" if r and "layer" in r
                           else "not applicable" if r and "skipped" in r else "none passed" if r else "–"
                           for r in refusal]))
        lines.append(_row("ID refusal with the direction ablated", [_cell(r["refusal_ablated"]) if r and "layer" in r
                                                                      else "–" for r in refusal]))
        base = results[names[0]]["suites"]["id_harmful"]["value"]
        carried = []
        for n, r in zip(names, refusal):
            refusal_rate = results[n]["suites"]["id_harmful"]["value"]
            learned = refusal_rate - base
            if r is None or "layer" not in r or learned <= 0.05:
                carried.append("–")
            else:
                carried.append(f"{(refusal_rate - r['refusal_ablated']['value']) / learned:.2f}")
        lines.append(_row("share of learned refusal the direction carries", carried))
    for key, label in (("n_trainable", "trainable parameters"), ("steps", "training steps"),
                       ("tail_loss", "training loss, mean of the last 10 steps"), ("wall_s", "training time (s)")):
        cells = [train_info.get(n, {}).get(key) for n in names]
        lines.append(_row(label, [("–" if c is None else f"{c:,}" if isinstance(c, int) else f"{c:.3g}")
                                  for c in cells]))
    return "\n".join(lines)


def judges_table(judges: dict[str, dict]) -> str:
    """Markdown: each refusal judge's precision / recall against human labels."""
    lines = ["| refusal judge (UncensorBench test split, human labels) | precision | recall | accuracy | n |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['accuracy']:.3f} | {s['n']} |"
              for name, s in judges.items()]
    return "\n".join(lines)


def probes_table(folders: dict[str, Path]) -> str:
    """Markdown: for each probe sweep, its bag-of-words baseline and the best residual / head probe."""
    import pandas as pd

    lines = ["| probe data | bag of words | best residual site | best head | layer 0 residual |", "|---|---|---|---|---|"]
    for label, folder in folders.items():
        if not (folder / "probes.csv").is_file():
            continue
        table = pd.read_csv(folder / "probes.csv")
        lex = json.loads((folder / "lexical.json").read_text())["accuracy"] if (folder / "lexical.json").is_file() else None
        rows = table.to_dict("records")
        best = {}
        for kind in ("resid_post", "z"):
            of_kind = [r for r in rows if r["kind"] == kind]
            if of_kind:
                top = max(of_kind, key=lambda r: r["accuracy"])
                best[kind] = f"{top['accuracy']:.3f} ({top['site']})"
        l0 = [r["accuracy"] for r in rows if r["kind"] == "resid_post" and r["layer"] == 0]
        lines.append(f"| {label} | {'–' if lex is None else f'{lex:.3f}'} | {best.get('resid_post', '–')} | "
                     f"{best.get('z', '–')} | {f'{l0[0]:.3f}' if l0 else '–'} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- seeds
def _pool_rate(cells: list[dict]) -> dict:
    """Rates of several seeds pooled: the counts add up, one Wilson interval; ``per_seed`` values."""
    if cells[0].get("metric") == "perplexity" or any(math.isnan(c.get("ci_low", float("nan"))) for c in cells):
        vals = [c["value"] for c in cells]
        return {**{k: v for k, v in cells[0].items() if k != "samples"}, "value": float(np.mean(vals)),
                "ci_low": float("nan"), "ci_high": float("nan"), "per_seed": vals}
    k = sum(round(c["value"] * c["n"]) for c in cells)
    n = sum(c["n"] for c in cells)
    lo, hi = wilson_interval(np.array([k]), n)
    return {"metric": cells[0].get("metric"), "kind": cells[0].get("kind"), "value": k / n, "ci_low": float(lo[0]),
            "ci_high": float(hi[0]), "n": n, "per_seed": [c["value"] for c in cells]}


def _mean_rows(rows_per_seed: list[list[dict]]) -> list[dict]:
    out = []
    for rows in zip(*rows_per_seed):
        row = dict(rows[0])
        for key, v in rows[0].items():
            if isinstance(v, float):
                row[key] = float(np.mean([r[key] for r in rows]))
        out.append(row)
    return out


def pool_seeds(per_seed: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """``{seed: {run: result}}`` -> ``{run: result}`` over the seeds every run has: suites pooled
    (:func:`_pool_rate`), erasure / transfer rows averaged, refusal-direction results kept per seed
    with the ablated refusal pooled. Samples are seed 0's (the report shows a few)."""
    seeds = list(per_seed)
    runs = [r for r in per_seed[seeds[0]] if all(r in per_seed[s] for s in seeds)]
    out: dict[str, dict] = {}
    for run in runs:
        rs = [per_seed[s][run] for s in seeds]
        suites = {}
        for suite in rs[0]["suites"]:
            cells = [r["suites"][suite] for r in rs if suite in r["suites"]]
            suites[suite] = {**_pool_rate(cells), **({"samples": cells[0]["samples"]} if "samples" in cells[0] else {})}
        res: dict[str, Any] = {"suites": suites, "seeds": seeds, "erasure": _mean_rows([r["erasure"] for r in rs])}
        if all(r.get("transfer") for r in rs):
            res["transfer"] = {**rs[0]["transfer"], "sites": _mean_rows([r["transfer"]["sites"] for r in rs])}
        if all(r.get("refusal") for r in rs):
            ok = [r["refusal"] for r in rs if "layer" in r["refusal"]]
            per = [r["refusal"] for r in rs]
            if len(ok) == len(rs):
                res["refusal"] = {**ok[0], "per_seed": per, "refusal_ablated": _pool_rate([r["refusal_ablated"] for r in ok])}
            else:  # a seed without a direction: none passed, or not applicable (the same for every seed)
                res["refusal"] = {"per_seed": per, **({"skipped": per[0]["skipped"]} if "skipped" in per[0] else {})}
        out[run] = res
    return out


def pool_train_info(per_seed: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Training summaries over seeds: means of the final losses and the wall time."""
    by_run: dict[str, list[dict]] = {}
    for info in per_seed.values():
        for run, summary in info.items():
            by_run.setdefault(run, []).append(summary)

    def mean(rows: list[dict], key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    return {run: {**rows[0], **{k: mean(rows, k) for k in ("last_loss", "tail_loss", "wall_s")}}
            for run, rows in by_run.items()}


def loss_figure(method_runs: dict[str, str]):
    """Plotly: every trained model's training loss by step (smoothed over 10 steps), to see it flatten."""
    import plotly.graph_objects as go

    from ..train import RunFolder

    fig = go.Figure()
    for name, run_dir in method_runs.items():
        rows = [r for r in RunFolder(run_dir).metrics() if "loss" in r and "step" in r]
        if not rows:
            continue
        steps, loss = [r["step"] for r in rows], np.array([r["loss"] for r in rows], dtype=float)
        smooth = np.convolve(loss, np.ones(10) / 10, mode="valid") if len(loss) >= 10 else loss
        fig.add_scatter(x=steps[len(steps) - len(smooth):], y=smooth, mode="lines", name=name)
    fig.update_layout(title="Training loss (10-step running mean)", xaxis_title="step", yaxis_title="loss",
                      template="plotly_white")
    return fig
