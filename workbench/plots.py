"""Plotly figures for probe sweeps and erasure checks.

All functions take the DataFrames produced by :mod:`workbench.probes` / :mod:`workbench.erasure`
and return a ``plotly.graph_objects.Figure``. ``save_html`` writes a self-contained file
(plotly.js inlined, so it opens offline).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import plotly.graph_objects as go

CHANCE = 0.5


def _split_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(layer-level rows, per-head rows), both restricted to rows with a layer."""
    need = {"kind", "layer"}
    if not need <= set(df.columns):
        raise ValueError(f"expected a probe DataFrame with columns {sorted(need)}; got {list(df.columns)}")
    df = cast(pd.DataFrame, df[df["layer"].notna()])
    heads = df["head"].notna() if "head" in df.columns else pd.Series(False, index=df.index)
    return cast(pd.DataFrame, df[~heads]), cast(pd.DataFrame, df[heads])


def _error_y(rows: pd.DataFrame, metric: str) -> dict | None:
    lo, hi = f"{metric}_ci_low", f"{metric}_ci_high"
    if lo not in rows or hi not in rows:
        return None
    v = rows[metric].to_numpy(float)
    return dict(type="data", symmetric=False, array=rows[hi].to_numpy(float) - v,
                arrayminus=v - rows[lo].to_numpy(float), thickness=1)


def _chance(fig: go.Figure, metric: str) -> None:
    if metric.startswith(("accuracy", "auroc")):
        fig.add_hline(y=CHANCE, line_dash="dash", line_color="gray", annotation_text="chance",
                      annotation_position="bottom right")


def probe_accuracy_plot(df: pd.DataFrame, metric: str = "accuracy", title: str | None = None,
                        lexical: dict | None = None) -> go.Figure:
    """``metric`` vs layer, one line per site kind, CI error bars, dashed chance line at 0.5.

    Per-head rows (kind ``z`` with a head index) are shown as one line "z (best head)": the
    head with the highest ``metric`` at each layer. ``lexical``
    (:func:`workbench.probes.lexical_baseline`) is drawn as a dotted horizontal line: what a
    bag-of-words classifier of the same prompts reaches.
    """
    if metric not in df.columns:
        raise ValueError(f"metric {metric!r} not in DataFrame columns {list(df.columns)}")
    layer_df, head_df = _split_rows(df)
    fig = go.Figure()
    for kind, rows in layer_df.groupby("kind", sort=False):
        rows = rows.sort_values("layer")
        fig.add_trace(go.Scatter(x=rows["layer"].astype(int), y=rows[metric], mode="lines+markers", name=str(kind),
                                 error_y=_error_y(rows, metric), customdata=rows[["site"]] if "site" in rows else None,
                                 hovertemplate="%{customdata[0]}<br>" + metric + "=%{y:.3f}<extra></extra>"))
    for kind, rows in head_df.groupby("kind", sort=False):
        best = rows.loc[rows.groupby("layer")[metric].idxmax()].sort_values("layer")
        fig.add_trace(go.Scatter(x=best["layer"].astype(int), y=best[metric], mode="lines+markers",
                                 name=f"{kind} (best head)", line_dash="dot", error_y=_error_y(best, metric),
                                 customdata=best[["site"]],
                                 hovertemplate="%{customdata[0]}<br>" + metric + "=%{y:.3f}<extra></extra>"))
    _chance(fig, metric)
    if lexical is not None and metric in lexical:
        fig.add_hline(y=lexical[metric], line_dash="dot", line_color="black",
                      annotation_text=f"bag of words {lexical[metric]:.2f}", annotation_position="top left")
    fig.update_layout(title=title or f"Probe {metric} by layer", xaxis_title="layer", yaxis_title=metric,
                      template="plotly_white", legend_title="site kind")
    return fig


def head_heatmap(df: pd.DataFrame, metric: str = "accuracy", kind: str = "z", title: str | None = None) -> go.Figure:
    """Layer x head heatmap of ``metric`` for the per-head rows of ``kind`` (z shape ``[n_layers, n_heads]``)."""
    if metric not in df.columns:
        raise ValueError(f"metric {metric!r} not in DataFrame columns {list(df.columns)}")
    rows = df[(df["kind"] == kind) & df["head"].notna() & df["layer"].notna()]
    if rows.empty:
        raise ValueError(f"no per-head rows of kind {kind!r} (sites like 'blocks.L.attn.hook_{kind}[h]')")
    grid = rows.pivot_table(index="layer", columns="head", values=metric, aggfunc="mean")
    layers, heads = np.arange(int(cast(float, grid.index.max())) + 1), np.arange(int(cast(float, grid.columns.max())) + 1)
    grid = grid.reindex(index=layers, columns=heads)  # missing cells stay NaN (blank)
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(float), x=heads, y=layers, colorscale="Viridis",
                               zmin=CHANCE if metric.startswith(("accuracy", "auroc")) else None,
                               zmax=1.0 if metric.startswith(("accuracy", "auroc")) else None,
                               colorbar_title=metric,
                               hovertemplate="layer %{y}, head %{x}<br>" + metric + "=%{z:.3f}<extra></extra>"))
    fig.update_layout(title=title or f"Per-head probe {metric}", xaxis_title="head", yaxis_title="layer",
                      template="plotly_white")
    return fig


def erasure_plot(df: pd.DataFrame, metric: str = "accuracy", title: str | None = None) -> go.Figure:
    """Before / after LEACE ``metric`` per layer (one pair of lines per site kind; per-head rows
    use the best head before erasure and the same head after)."""
    b, a = f"{metric}_before", f"{metric}_after"
    if b not in df.columns or a not in df.columns:
        raise ValueError(f"expected columns {b!r} and {a!r} (from erasure_check)")
    layer_df, head_df = _split_rows(df)
    parts = [(str(k), r.sort_values("layer")) for k, r in layer_df.groupby("kind", sort=False)]
    parts += [(f"{k} (best head)", r.loc[r.groupby("layer")[b].idxmax()].sort_values("layer"))
              for k, r in head_df.groupby("kind", sort=False)]
    fig = go.Figure()
    for name, rows in parts:
        x = rows["layer"].astype(int)
        for col, tag, dash in ((b, "before", "solid"), (a, "after LEACE", "dash")):
            err = _error_y(rows.rename(columns={f"{col}_ci_low": f"{metric}_ci_low", f"{col}_ci_high": f"{metric}_ci_high",
                                                col: metric}), metric)
            fig.add_trace(go.Scatter(x=x, y=rows[col], mode="lines+markers", name=f"{name}: {tag}",
                                     line_dash=dash, error_y=err))
    _chance(fig, metric)
    fig.update_layout(title=title or f"Probe {metric} before / after LEACE (eraser fit on train folds)",
                      xaxis_title="layer", yaxis_title=metric, template="plotly_white")
    return fig


def save_html(fig: go.Figure, path: str | Path) -> Path:
    """Write ``fig`` as a self-contained HTML file (plotly.js inlined: works offline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path
