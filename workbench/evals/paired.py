"""Paired comparisons of evaluated runs on the same prompts: for every suite with per-prompt
samples and every pair of runs, the exact McNemar test on the metric's per-prompt outcome, the
difference of the two rates with Newcombe's paired interval, Holm-adjusted over all comparisons."""

from __future__ import annotations

from collections.abc import Sequence

from ..stats import mark_significant, mcnemar_exact

# the per-prompt outcome each suite kind's metric counts, from a sample's third field (refused, or
# the exact-match hit for gsm8k)
HIT = {"refusal": True, "overrefusal": True, "attack": False, "compliance": False, "gsm8k": True}


def _outcomes(metrics: dict) -> tuple[list[str], list[bool]]:
    want = HIT[metrics["kind"]]
    return [s[0] for s in metrics["samples"]], [bool(s[2]) == want for s in metrics["samples"]]


def paired_suite_tests(results: dict[str, dict] | Sequence[dict[str, dict]], alpha: float = 0.05) -> list[dict]:
    """``results``: ``{run: load_metrics(...)}``, or one such mapping per seed (each seed's runs
    answered the same prompts; the seeds' per-prompt outcomes are pooled). One row per (suite,
    run A, run B): ``diff`` = A's rate - B's, ``diff_ci``, ``p_value``, ``p_holm``, ``significant``
    (at ``alpha`` after Holm over every row), ``n_seeds``."""
    per_seed = [results] if isinstance(results, dict) else list(results)
    names = [n for n in per_seed[0] if all(n in r for r in per_seed)]
    rows = []
    suites = [s for s, m in per_seed[0][names[0]]["suites"].items() if m.get("samples") and m.get("kind") in HIT]
    for suite in suites:
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                va, vb, seeds = [], [], 0
                for res in per_seed:
                    sa, sb = res[a]["suites"].get(suite), res[b]["suites"].get(suite)
                    if not sa or not sb:
                        continue
                    (pa, oa), (pb, ob) = _outcomes(sa), _outcomes(sb)
                    if pa != pb:
                        continue  # not the same prompts: no pairing
                    va, vb, seeds = va + oa, vb + ob, seeds + 1
                if seeds:
                    rows.append({"suite": suite, "metric": per_seed[0][a]["suites"][suite].get("metric"), "a": a, "b": b,
                                 "n_seeds": seeds, **mcnemar_exact(va, vb)})
    return mark_significant(rows, alpha)


def paired_table(rows: list[dict]) -> str:
    """Markdown of :func:`paired_suite_tests`."""
    lines = ["| suite (metric) | A | B | A - B [95% Newcombe] | A only / B only | p | p (Holm) | significant at 0.05 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['suite']} ({r['metric']}) | {r['a']} | {r['b']} | {r['diff']:+.3f} "
                     f"[{r['diff_ci'][0]:+.2f}, {r['diff_ci'][1]:+.2f}] | {r['a_only']} / {r['b_only']} | "
                     f"{r['p_value']:.2g} | {r['p_holm']:.2g} | {'yes' if r['significant'] else 'no'} |")
    return "\n".join(lines)
