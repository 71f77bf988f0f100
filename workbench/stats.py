"""Classification metrics with confidence intervals, shared by probes, erasure checks and
evaluations: Wilson score intervals, AUROC under many example weightings at once (bootstrap),
and the per-site metric table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

Z95 = 1.959963984540054


def wilson_interval(k: np.ndarray, n: int, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for k successes out of n (vectorized over k)."""
    p = np.asarray(k, dtype=float) / n
    den = 1 + z * z / n
    center = (p + z * z / (2 * n)) / den
    half = z / den * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return center - half, center + half


def auroc_weighted(scores: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of each score row under each example weighting (ties count 1/2).

    scores ``[S, N]``, y ``[N]`` 0/1, weights ``[B, N]`` (e.g. bootstrap counts) -> ``[S, B]``.
    Per site, the negatives are sorted once and every positive finds how many of them score below
    it (``lo``) and at most as high (``hi``, binary search); under each weighting the numerator is
    then ``sum_pos w_i * (C[lo_i] + C[hi_i]) / 2`` with ``C`` the cumulative weight of the sorted
    negatives. Integer weights small enough that every sum stays below 2**24 (bootstrap counts up
    to N ~ 4000) are summed exactly in float32, others in float64.
    """
    s = torch.as_tensor(scores, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64)
    yy = torch.as_tensor(y) == 1
    S, B = s.shape[0], w.shape[0]
    exact32 = bool((w == w.round()).all()) and float(w.sum(1).max()) ** 2 < 2**24
    cdt = torch.float32 if exact32 else torch.float64
    sn, order = s[:, ~yy].sort(dim=1)  # [S, Nn]: the negatives' scores, ascending
    sp = s[:, yy].contiguous()  # [S, Np]
    lo = torch.searchsorted(sn, sp, side="left")  # negatives strictly below each positive
    hi = torch.searchsorted(sn, sp, side="right")  # ... at or below
    tied = (lo != hi).any(1)
    wn, wp = w[:, ~yy].to(cdt), w[:, yy].to(cdt)  # [B, Nn], [B, Np]
    Nn, Np = wn.shape[1], wp.shape[1]
    out = torch.empty(S, B, dtype=torch.float64)
    chunk = max(1, 2**20 // (B * Nn))  # sites per pass: [s, B, Nn] blocks of about a million weights
    for a in range(0, S, chunk):
        b = min(S, a + chunk)
        C = torch.zeros(b - a, B, Nn + 1, dtype=cdt)  # C[..., k]: weight of the k lowest negatives
        torch.cumsum(torch.gather(wn.expand(b - a, B, Nn), 2, order[a:b, None, :].expand(b - a, B, Nn)), 2,
                     out=C[..., 1:])
        below = C.gather(2, lo[a:b, None, :].expand(b - a, B, Np))  # [s, B, Np]
        if bool(tied[a:b].any()):
            below = 0.5 * (below + C.gather(2, hi[a:b, None, :].expand(b - a, B, Np)))
        out[a:b] = (below * wp).sum(2, dtype=cdt)
    wpos = wp.sum(1, dtype=torch.float64)
    return (out / (wpos * wn.sum(1, dtype=torch.float64))).numpy()


def score_metrics(
    scores: np.ndarray, y: np.ndarray, fold_of: np.ndarray | None = None, n_boot: int = 200, seed: int = 0
) -> pd.DataFrame:
    """Accuracy (threshold 0), Wilson CI, AUROC with a seeded bootstrap CI, per score row.

    scores ``[S, N]`` (logits: > 0 means class 1), y ``[N]``; fold_of ``[N]`` gives per-fold std.
    """
    S, N = scores.shape
    correct = (scores > 0) == (y[None] == 1)  # [S, N]
    k = correct.sum(1)
    lo, hi = wilson_interval(k, N)
    rng = np.random.default_rng(seed)
    flat = (np.arange(n_boot)[:, None] * N + rng.integers(0, N, size=(n_boot, N))).ravel()
    counts = np.vstack([np.ones((1, N)), np.bincount(flat, minlength=n_boot * N).reshape(n_boot, N)])
    auc = auroc_weighted(scores, y, counts)
    boot = auc[:, 1:]
    df = pd.DataFrame({"n": N, "accuracy": k / N, "accuracy_ci_low": lo, "accuracy_ci_high": hi, "auroc": auc[:, 0],
                       "auroc_ci_low": np.nanpercentile(boot, 2.5, axis=1),
                       "auroc_ci_high": np.nanpercentile(boot, 97.5, axis=1)})
    if fold_of is not None:
        accs = np.stack([correct[:, fold_of == f].mean(1) for f in np.unique(fold_of)], 1)
        df["accuracy_fold_std"] = accs.std(1, ddof=1)
    return df


def mcnemar_exact(a: np.ndarray | Sequence[bool], b: np.ndarray | Sequence[bool]) -> dict:
    """Paired comparison of two 0/1 outcome vectors on the same items (``a``, ``b`` ``[n]``).

    Returns ``n``, ``diff`` = mean(a) - mean(b) with Newcombe's (1998, method 10) score interval
    ``diff_ci``, the discordant counts ``a_only`` / ``b_only`` and the exact McNemar p-value
    (two-sided binomial test of the discordant pairs at 1/2).
    """
    from scipy.stats import binom

    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired outcomes need two non-empty vectors of one length, got {a.shape} and {b.shape}")
    n = len(a)
    both, a_only, b_only = int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum())
    neither = n - both - a_only - b_only
    disc = a_only + b_only
    p = 1.0 if disc == 0 else float(min(1.0, 2 * binom.cdf(min(a_only, b_only), disc, 0.5)))
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    (l1,), (u1,) = wilson_interval(np.array([both + a_only]), n)
    (l2,), (u2,) = wilson_interval(np.array([both + b_only]), n)
    den = float(np.sqrt(float(both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)))
    phi = (both * neither - a_only * b_only) / den if den > 0 else 0.0
    d = p1 - p2
    lo = d - np.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = d + np.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return {"n": n, "diff": float(d), "diff_ci": [float(lo), float(hi)], "a_only": a_only, "b_only": b_only,
            "p_value": p}


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def mark_significant(rows: list[dict], alpha: float = 0.05) -> list[dict]:
    """Add ``p_holm`` (Holm over ``rows``' ``p_value`` s) and ``significant`` (``p_holm < alpha``) to
    each row, in place; returns ``rows``."""
    for row, adj in zip(rows, holm([r["p_value"] for r in rows])):
        row.update(p_holm=adj, significant=bool(adj < alpha))
    return rows
