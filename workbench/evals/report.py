"""Evaluation reports: one JSON of all metrics (with confidence intervals) and one HTML page
(plotly) that compares runs side by side. Every prompt and response is HTML-escaped."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

REPORT_FORMAT = "workbench.eval/1"


class RunError(ValueError):
    """A run folder or report that is missing or corrupt."""


def save_metrics(metrics: dict, path: str | Path, model_id: str, size: str, seed: int,
                 judge: str | None = None) -> Path:
    """``metrics`` (:func:`~workbench.evals.evaluate`'s) -> ``path``, written atomically; ``judge``
    names the refusal judge that scored the generations."""
    from .._files import write_json_atomic

    doc = {"format": REPORT_FORMAT, "model": model_id, "size": size, "seed": seed, "suites": metrics}
    return write_json_atomic(path, {**doc, "judge": judge} if judge else doc)


def load_metrics(path: str | Path) -> dict:
    """Read a metrics JSON written by :func:`save_metrics`; a clear error if missing or corrupt."""
    path = Path(path)
    if path.is_dir():
        path = path / "eval.json"
    if not path.is_file():
        raise RunError(f"no evaluation at {path}")
    from .._files import parse_file

    data = parse_file(path, RunError)
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT or not isinstance(data.get("suites"), dict):
        raise RunError(f"{path} is not a workbench evaluation ({REPORT_FORMAT})")
    return data


def _fmt(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def comparison_table(runs: dict[str, dict]) -> list[list[str]]:
    """Rows ``[suite, metric, run1, run2, ...]`` with ``value [ci_low, ci_high]`` cells."""
    suites = list(dict.fromkeys(s for data in runs.values() for s in data["suites"]))  # every run's, in order
    rows = []
    for s in suites:
        first = next(data["suites"][s] for data in runs.values() if s in data["suites"])
        cells = []
        for data in runs.values():
            m = data["suites"].get(s, {})
            ci = "" if math.isnan(m.get("ci_low", float("nan"))) else f" [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]"
            cells.append(f"{_fmt(m.get('value'))}{ci}")
        rows.append([s, first["metric"], *cells])
    return rows


def comparison_figure(runs: dict[str, dict]) -> go.Figure:
    fig = go.Figure()
    for name, data in runs.items():
        suites = [s for s, m in data["suites"].items() if m["kind"] != "perplexity"]
        vals = [data["suites"][s]["value"] for s in suites]
        err_hi = [data["suites"][s]["ci_high"] - data["suites"][s]["value"] for s in suites]
        err_lo = [data["suites"][s]["value"] - data["suites"][s]["ci_low"] for s in suites]
        fig.add_bar(name=name, x=suites, y=vals,
                    error_y={"type": "data", "array": err_hi, "arrayminus": err_lo, "visible": True})
    fig.update_layout(barmode="group", yaxis_title="rate / accuracy (95% CI)", title="Safety evaluation",
                      template="plotly_white")
    return fig


def write_report(runs: dict[str, dict], out: str | Path, n_samples: int = 5,
                 extra_rows: Sequence[Sequence[str]] = ()) -> Path:
    """Write ``report.html`` comparing runs (``{run name: load_metrics(...)}``); ``extra_rows``
    (``[name, metric, cell per run]``) are appended to the table."""
    if not runs:
        raise RunError("no runs to report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    e = html.escape
    head = "".join(f"<th>{e(n)}</th>" for n in runs)
    rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in [*comparison_table(runs), *extra_rows])
    samples = []
    for name, data in runs.items():
        for suite, m in data["suites"].items():
            for prompt, response, flag in m.get("samples", [])[:n_samples]:
                samples.append(f"<tr><td>{e(name)}</td><td>{e(suite)}</td><td><pre>{e(prompt[:600])}</pre></td>"
                               f"<td><pre>{e(response[:600])}</pre></td><td>{e(str(flag))}</td></tr>")
    fig = comparison_figure(runs).to_html(full_html=False, include_plotlyjs=True)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Workbench evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}} pre{{white-space:pre-wrap;max-width:40em;margin:0}}</style>
</head><body><h1>Safety evaluation</h1>
<table><tr><th>suite</th><th>metric</th>{head}</tr>{rows}</table>
{fig}
<h2>Samples</h2><table><tr><th>run</th><th>suite</th><th>prompt</th><th>response</th><th>judged</th></tr>
{"".join(samples)}</table></body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
