import json

import numpy as np
import pytest

from workbench.evals import RunError, build_suites, evaluate, load_metrics, save_metrics, write_report
from workbench.evals.suites import Suite


def _metrics(value):
    return {"id_harmful": {"metric": "refusal rate", "kind": "refusal", "value": value, "ci_low": 0.0,
                           "ci_high": 1.0, "n": 2,
                           "samples": [["<script>alert(1)</script> how?", "<b>no</b>", True]]}}


def test_report_escapes_prompts_and_compares_runs(tmp_path):
    save_metrics(_metrics(0.0), tmp_path / "base" / "eval.json", "m", "quick", 0)
    save_metrics(_metrics(0.5), tmp_path / "sft" / "eval.json", "m", "quick", 0)
    runs = {"base": load_metrics(tmp_path / "base"), "sft": load_metrics(tmp_path / "sft")}
    page = write_report(runs, tmp_path / "report").read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;no&lt;/b&gt;" in page and "0.500" in page and ">sft<" in page


def test_missing_or_corrupt_runs_are_clear_errors(tmp_path):
    with pytest.raises(RunError, match="no evaluation"):
        load_metrics(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "eval.json").write_text("{not json")
    with pytest.raises(RunError, match="corrupt"):
        load_metrics(tmp_path / "bad")
    (tmp_path / "bad" / "eval.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(RunError, match="not a workbench evaluation"):
        load_metrics(tmp_path / "bad")


def test_evaluate_on_the_real_model(wb):
    suites = build_suites("quick")
    small = {k: Suite(s.name, s.kind, s.records[:4]) for k, s in suites.items() if k in ("id_harmful", "mmlu", "perplexity")}
    m = evaluate(wb, small, max_new_tokens=24, progress=False)
    assert 0 <= m["id_harmful"]["value"] <= 1 and len(m["id_harmful"]["samples"]) == 4
    assert m["mmlu"]["n"] == 4 and 1 < m["perplexity"]["value"] < 1000


def _suite(kind, outcomes, prompts=None):
    prompts = prompts or [f"p{i}" for i in range(len(outcomes))]
    return {"kind": kind, "metric": kind, "value": sum(outcomes) / len(outcomes),
            "samples": [[p, f"r{i}", bool(o)] for i, (p, o) in enumerate(zip(prompts, outcomes))]}


def test_paired_tests_pool_seeds_like_one_concatenated_mcnemar():
    """Per seed, two runs answered the same prompts; pooled = McNemar on the concatenated outcomes."""
    from workbench.evals.paired import paired_suite_tests
    from workbench.stats import mcnemar_exact

    a0, b0 = [1, 1, 0, 1, 0, 1], [0, 1, 0, 0, 0, 0]
    a1, b1 = [1, 0, 1, 1], [1, 0, 0, 0]
    seeds = [{"A": {"suites": {"id_harmful": _suite("refusal", a0)}}, "B": {"suites": {"id_harmful": _suite("refusal", b0)}}},
             {"A": {"suites": {"id_harmful": _suite("refusal", a1, list("wxyz"))}},
              "B": {"suites": {"id_harmful": _suite("refusal", b1, list("wxyz"))}}}]
    (row,) = paired_suite_tests(seeds)
    want = mcnemar_exact(np.array(a0 + a1, bool), np.array(b0 + b1, bool))
    assert row["n_seeds"] == 2 and row["n"] == 10 and row["p_value"] == pytest.approx(want["p_value"])
    assert row["diff"] == pytest.approx(want["diff"]) and row["a_only"] == 5 and row["b_only"] == 0
    # a seed whose prompts differ between the runs is not paired
    seeds[1]["B"]["suites"]["id_harmful"] = _suite("refusal", b1, list("abcd"))
    (row,) = paired_suite_tests(seeds)
    assert row["n_seeds"] == 1 and row["n"] == 6


def test_rejudge_scores_stored_generations_again():
    from workbench.evals.suites import rejudge

    metrics = {"id_harmful": _suite("refusal", [0, 0, 0]), "benign": _suite("compliance", [0, 0, 0]),
               "mmlu": {"kind": "mmlu", "value": 0.5, "n": 2}}
    flagged = rejudge(metrics, lambda prompts, responses: np.array([r == "r0" for r in responses]))
    assert [s[2] for s in flagged["id_harmful"]["samples"]] == [True, False, False]
    assert flagged["id_harmful"]["value"] == pytest.approx(1 / 3)  # refusal rate
    assert flagged["benign"]["value"] == pytest.approx(2 / 3)  # compliance = not refused
    assert flagged["mmlu"] is metrics["mmlu"] and flagged["id_harmful"]["n"] == 3
