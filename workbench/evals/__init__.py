"""Safety evaluation: refusal judges, seeded suites (ID harmful, OOD jailbreaks, benign,
over-refusal, capability) and reports."""

from .judges import ProbeJudge, SubstringJudge, is_refusal, judge_report, judge_scores, labelled_pairs, refusal_score
from .report import RunError, load_metrics, save_metrics, write_report
from .suites import Suite, build_suites, evaluate, prompt_suites, run_suite

__all__ = ["ProbeJudge", "RunError", "Suite", "prompt_suites", "SubstringJudge", "build_suites", "evaluate", "is_refusal",
           "judge_report", "judge_scores", "labelled_pairs", "load_metrics", "refusal_score", "run_suite", "save_metrics",
           "write_report"]
