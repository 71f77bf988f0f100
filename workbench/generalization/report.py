"""Reports of a generalization experiment: ``results.json``, ``results.md``, ``report.html``.

Per method: ID accuracy, OOD accuracy and the OOD flipped (spurious) rate, as the mean over
training seeds with the spread (min-max) and the Wilson interval pooled over seeds' prompts;
CAFT methods also with the ablation kept at inference, and the leakage check. Between every pair of
methods, per split: an exact McNemar test on the same (seed, prompt) outcomes, the difference with
Newcombe's paired interval, Holm-adjusted over the pairs.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from .._log import get_logger
from ..stats import mark_significant, mcnemar_exact, wilson_interval

log = get_logger(__name__)

SPLITS = (("id_test", "ID"), ("ood_test", "OOD"))
COLORS = ("#1f77b4", "#d62728")  # per split, in both figures


def summarize(results: dict) -> dict[str, dict]:
    """``{method: {split: {mean, min, max, pooled_ci, n_seeds}, flipped: ..., kept: ...}}``."""
    methods: dict[str, dict] = {}
    for seed, res in results["seeds"].items():
        for method, r in res.items():
            if method == "concepts":
                continue
            m = methods.setdefault(method, {"per_seed": {}})
            m["per_seed"][seed] = {s: r["metrics"][s]["accuracy"] for s, _ in SPLITS}
            m["per_seed"][seed]["flipped"] = r["metrics"]["ood_test"].get("flipped")
            if "metrics_ablation_kept" in r:
                m["per_seed"][seed]["ood_kept"] = r["metrics_ablation_kept"]["ood_test"]["accuracy"]
                m["per_seed"][seed]["id_kept"] = r["metrics_ablation_kept"]["id_test"]["accuracy"]
            m.setdefault("_correct", {}).setdefault("id_test", []).extend(r["metrics"]["id_test"]["correct"])
            m["_correct"].setdefault("ood_test", []).extend(r["metrics"]["ood_test"]["correct"])
            if "leakage" in r:
                m.setdefault("leakage", []).extend([{**row, "seed": seed} for row in r["leakage"]])
    for m in methods.values():
        for key in ("id_test", "ood_test", "flipped", "ood_kept", "id_kept"):
            vals = [v[key] for v in m["per_seed"].values() if v.get(key) is not None]
            if not vals:
                continue
            m[key] = {"mean": float(np.mean(vals)), "min": float(min(vals)), "max": float(max(vals)),
                      "std": float(np.std(vals)), "n_seeds": len(vals)}
        for split in ("id_test", "ood_test"):
            c = np.asarray(m["_correct"][split])
            lo, hi = wilson_interval(np.array([c.sum()]), len(c))
            m[split]["pooled_ci"] = [float(lo[0]), float(hi[0])]
            m[split]["n_prompts"] = int(len(c))
        del m["_correct"]
    return methods


def paired_tests(results: dict, alpha: float = 0.05) -> list[dict]:
    """Every pair of methods on each split, over the seeds both ran: exact McNemar on per-prompt
    correctness, the accuracy difference (first - second) with its interval, Holm-adjusted p over
    the pairs of that split; ``significant`` at ``alpha`` after adjustment."""
    correct: dict[str, dict[str, dict[str, list[int]]]] = {}
    for seed, res in results["seeds"].items():
        for method, r in res.items():
            if method != "concepts":
                for split, _ in SPLITS:
                    correct.setdefault(method, {}).setdefault(split, {})[seed] = r["metrics"][split]["correct"]
    methods = list(correct)
    rows = []
    for split, _ in SPLITS:
        block = []
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                seeds = [x for x in correct[a][split] if x in correct[b][split]]
                if not seeds:
                    continue
                va = np.concatenate([correct[a][split][x] for x in seeds])
                vb = np.concatenate([correct[b][split][x] for x in seeds])
                block.append({"split": split, "a": a, "b": b, "seeds": seeds, **mcnemar_exact(va, vb)})
        rows += mark_significant(block, alpha)
    return rows


def _fmt(s: dict | None, ci: bool = True) -> str:
    if not s:
        return "-"
    txt = f"{s['mean']:.3f}"
    if s.get("n_seeds", 1) > 1:
        txt += f" ({s['min']:.2f}-{s['max']:.2f})"
    if ci and "pooled_ci" in s:
        txt += f" [{s['pooled_ci'][0]:.2f}, {s['pooled_ci'][1]:.2f}]"
    return txt


def markdown(results: dict, summary: dict) -> str:
    base = (results.get("baseline") or {}).get("metrics")
    untouched = (f"Untouched model: ID {base['id_test']['accuracy']:.3f}, OOD {base['ood_test']['accuracy']:.3f}."
                 if base else "Untouched model: not evaluated in this run (baseline: false).")
    lines = [f"# {results['settings']['task']}: what fine-tuning generalizes to", "",
             f"Seeds {results['settings']['seeds']}; {results['settings']['n_test']} ID and "
             f"{results['settings']['n_test']} OOD prompts; wall time of this invocation "
             f"{results.get('wall_s', 0):.0f} s (finished steps are skipped).",
             "Accuracy = the correct option's next-token logit beats the other's. Cells: mean over seeds "
             "(min-max over seeds) [95% Wilson interval over all seeds' prompts]. OOD flipped = the "
             "spurious cue's answer wins.", "",
             untouched, "",
             "| method | ID accuracy | OOD accuracy | OOD flipped | OOD with ablation kept |",
             "|---|---|---|---|---|"]
    for method, m in summary.items():
        lines.append(f"| {method} | {_fmt(m.get('id_test'))} | {_fmt(m.get('ood_test'))} | "
                     f"{_fmt(m.get('flipped'), False)} | {_fmt(m.get('ood_kept'), False)} |")
    tests = results.get("paired") or []
    if tests:
        lines += ["", "## Paired tests: exact McNemar on the same prompts (pooled over the seeds both ran), "
                  "Holm-adjusted over the pairs of each split", "",
                  "| split | A | B | A - B [95% Newcombe] | A only / B only correct | p | p (Holm) | significant at 0.05 |",
                  "|---|---|---|---|---|---|---|---|"]
        for t in tests:
            lines.append(f"| {dict(SPLITS)[t['split']]} | {t['a']} | {t['b']} | {t['diff']:+.3f} "
                         f"[{t['diff_ci'][0]:+.2f}, {t['diff_ci'][1]:+.2f}] | {t['a_only']} / {t['b_only']} | "
                         f"{t['p_value']:.2g} | {t['p_holm']:.2g} | {'yes' if t['significant'] else 'no'} |")
    leak = [(method, row) for method, m in summary.items() for row in m.get("leakage", [])]
    if leak:
        lines += ["", "## Leakage: probe accuracy of each attribute on the CAFT model's activations "
                  "(last prompt token, training prompts, 5-fold CV)", "",
                  "| method | seed | site | k ablated | attribute | full space | complement of the ablated subspace |",
                  "|---|---|---|---|---|---|---|"]
        for method, r in leak:
            lines.append(f"| {method} | {r['seed']} | {r['site']} | {r['k']} | {r['attribute']} | "
                         f"{r['probe_full']:.3f} | {r['probe_complement']:.3f} |")
    picks = {seed: res.get("concepts") for seed, res in results["seeds"].items() if res.get("concepts")}
    if picks:
        lines += ["", "## Directions chosen (per seed)", ""]
        for seed, p in picks.items():
            lines.append(f"- seed {seed}: k = {p.get('k')} per layer (matched controls); probe pick "
                         f"{p.get('probe_pick')}; person's pick {p.get('person_pick')}"
                         + (f"; SAE pick ({len(p['sae_pick'])} latents) {p['sae_pick']}" if p.get("sae_pick") else ""))
    return "\n".join(lines) + "\n"


def figure(summary: dict):
    """Plotly: ID and OOD accuracy per method, mean over seeds, error bars = pooled Wilson CI,
    per-seed values as dots."""
    import plotly.graph_objects as go

    fig = go.Figure()
    names = list(summary)
    for (split, label), color in zip(SPLITS, COLORS):
        means = [summary[m][split]["mean"] for m in names]
        lo = [summary[m][split]["mean"] - summary[m][split]["pooled_ci"][0] for m in names]
        hi = [summary[m][split]["pooled_ci"][1] - summary[m][split]["mean"] for m in names]
        fig.add_bar(name=label, x=names, y=means, marker_color=color, offsetgroup=label,
                    error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo))
        xs, ys = [], []
        for m in names:
            for v in summary[m]["per_seed"].values():
                xs.append(m)
                ys.append(v[split])
        fig.add_scatter(x=xs, y=ys, mode="markers", name=f"{label} per seed", offsetgroup=label,
                        marker=dict(color="black", size=6), showlegend=True)
    fig.add_hline(y=0.5, line_dash="dot", line_color="gray")
    fig.update_layout(barmode="group", yaxis=dict(range=[0, 1.02], title="accuracy"),
                      title="ID vs OOD accuracy per method (mean over seeds, 95% Wilson interval)",
                      template="plotly_white", height=450)
    return fig


def figure_svg(summary: dict, title: str = "ID vs OOD accuracy") -> str:
    """The same figure as a static SVG (for READMEs and papers; no browser, no kaleido): grouped
    bars = mean over seeds, whiskers = pooled 95% Wilson interval, dots = seeds."""
    import html as _html

    names = list(summary)
    w_group, w_bar, left, top, h = 150, 44, 48, 34, 220
    width = max(left + w_group * len(names) + 20, 600)
    y = lambda v: top + h * (1 - v)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + h + 46}" '
             f'font-family="sans-serif" font-size="11">',
             f'<text x="{left}" y="16" font-size="13">{_html.escape(title)}</text>']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        dash = ' stroke-dasharray="3,3"' if tick == 0.5 else ""
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#ddd"{dash}/>'
                     f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for i, m in enumerate(names):
        x0 = left + i * w_group + 20
        for j, ((split, label), color) in enumerate(zip(SPLITS, COLORS)):
            st = summary[m][split]
            x = x0 + j * (w_bar + 6)
            parts.append(f'<rect x="{x}" y="{y(st["mean"]):.1f}" width="{w_bar}" height="{h * st["mean"]:.1f}" '
                         f'fill="{color}" opacity="0.8"><title>{_html.escape(m)} {label}: {st["mean"]:.3f}</title></rect>')
            lo, hi = st["pooled_ci"]
            cx = x + w_bar / 2
            parts.append(f'<line x1="{cx}" x2="{cx}" y1="{y(lo):.1f}" y2="{y(hi):.1f}" stroke="black"/>')
            for v in summary[m]["per_seed"].values():
                parts.append(f'<circle cx="{cx}" cy="{y(v[split]):.1f}" r="2.5" fill="black"/>')
            parts.append(f'<text x="{cx}" y="{y(st["mean"]) - 4:.1f}" text-anchor="middle" font-size="10">'
                         f'{st["mean"]:.2f}</text>')
        parts.append(f'<text x="{x0 + w_bar + 3}" y="{top + h + 16}" text-anchor="middle">{_html.escape(m)}</text>')
    lx = left
    for (_, label), color in zip(SPLITS, COLORS):
        parts.append(f'<rect x="{lx}" y="{top + h + 28}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{lx + 14}" y="{top + h + 37}">{label}</text>')
        lx += 90
    parts.append(f'<text x="{lx}" y="{top + h + 37}">bars: mean over seeds; whiskers: 95% Wilson; dots: seeds</text>')
    return "".join(parts) + "</svg>"


def write_reports(results: dict, out: Path) -> Path:
    out = Path(out)
    summary = summarize(results)
    results = {**results, "paired": paired_tests(results)}
    (out / "results.json").write_text(json.dumps({"summary": summary, **results}, indent=2, default=str))
    md = markdown(results, summary)
    (out / "results.md").write_text(md)
    fig = figure(summary)
    body = fig.to_html(full_html=False, include_plotlyjs=True)
    table = "<pre>" + html.escape(md) + "</pre>"
    (out / "report.html").write_text("<html><head><meta charset='utf-8'><title>generalization report</title></head>"
                                     f"<body style='font-family:sans-serif'>{body}{table}</body></html>")
    (out / "figure.svg").write_text(figure_svg(summary, f"{results['settings']['task']}: ID vs OOD accuracy"))
    log.info(md)
    return out / "report.html"
