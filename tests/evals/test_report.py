import json

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
