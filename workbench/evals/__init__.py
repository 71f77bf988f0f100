"""Safety evaluation: refusal judges, seeded suites (ID harmful, OOD jailbreaks, benign,
over-refusal, capability) and reports."""

from .judges import (
                     ProbeJudge,
                     RefusalJudge,
                     SubstringJudge,
                     default_judge,
                     is_refusal,
                     judge_agreement,
                     judge_report,
                     judge_scores,
                     labelled_pairs,
                     labelled_sets,
                     refusal_score,
)
from .llm_judge import StrongRejectJudge
from .report import RunError, load_metrics, save_metrics, write_report
from .suites import Suite, build_suites, evaluate, prompt_suites, run_suite

__all__ = ["ProbeJudge", "RefusalJudge", "RunError", "StrongRejectJudge", "Suite", "prompt_suites", "SubstringJudge",
           "build_suites", "default_judge", "evaluate", "is_refusal", "judge_agreement", "judge_report", "judge_scores",
           "labelled_pairs", "labelled_sets", "load_metrics", "refusal_score", "run_suite", "save_metrics",
           "write_report"]
