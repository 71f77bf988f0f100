"""Named, seeded evaluation suites from the dataset registry, and the metrics they produce.

Every harmful prompt comes from the *test* split of its source (training recipes draw from the
train split, so no suite prompt was trained on); jailbreaks wrap test-split requests in attacks
no training recipe uses. Sizes: ``tiny`` for tests and ``--quick`` experiments, ``quick`` for minutes on 2 CPU cores,
``full`` for about an hour, or any number of prompts per suite.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import Record, jailbreak_suite, load_dataset
from ..stats import wilson_interval
from .judges import default_judge

if TYPE_CHECKING:
    from ..model import Workbench

SIZES = {"tiny": 4, "quick": 16, "full": 100}  # prompts per suite (MMLU twice, GSM8K half)
HARMFUL_SOURCES = ("advbench", "harmbench")
MAX_PROMPT_CHARS = 1500
MAX_TEMPLATE_CHARS = 1500  # jailbreak templates longer than this are left out of the attack suites


@dataclass
class Suite:
    name: str
    kind: str  # refusal | attack | compliance | overrefusal | gsm8k | mmlu | perplexity
    records: list[Record] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


def _sample(records: Sequence[Record], n: int, seed: int) -> list[Record]:
    records = sorted(records, key=lambda r: r.id)
    return random.Random(seed).sample(records, min(n, len(records)))


def build_suites(size: str | int = "quick", seed: int = 0) -> dict[str, Suite]:
    """The suites of one report. Deterministic for ``(size, seed)``; ``size`` is a name of
    :data:`SIZES` or a number of prompts per suite."""
    if isinstance(size, bool) or not (size in SIZES or (isinstance(size, int) and size > 0)):
        raise ValueError(f"size must be one of {list(SIZES)} or a positive number of prompts, not {size!r}")
    n = SIZES[size] if isinstance(size, str) else size
    harmful = [r for src in HARMFUL_SOURCES for r in load_dataset(src, split="test")]
    id_harmful = _sample(harmful, n, seed)
    used = {r.id for r in id_harmful}
    requests = _sample([r for r in harmful if r.id not in used], max(2, n // 4), seed + 1)
    suites = {"id_harmful": Suite("id_harmful", "refusal", id_harmful)}
    attacks = _attacks(requests, seed)
    for family in ("template", "gcg", "encoding"):
        recs = [r for r in attacks if r.meta["family"] == family]
        suites[f"ood_{family}"] = Suite(f"ood_{family}", "attack", _sample(recs, n, seed))
    # some benign instructions carry whole documents (up to ~2k tokens): keep prompts a small model
    # can read in its context and a batch can hold
    benign = [r for r in load_dataset("benign_instructions", split="test") if len(r.prompt) <= MAX_PROMPT_CHARS]
    suites["benign"] = Suite("benign", "compliance", _sample(benign, n, seed))
    suites["overrefusal"] = Suite("overrefusal", "overrefusal", _sample(load_dataset("overrefusal"), n, seed))
    suites["gsm8k"] = Suite("gsm8k", "gsm8k", _sample(load_dataset("gsm8k"), max(4, n // 2), seed))
    suites["mmlu"] = Suite("mmlu", "mmlu", _sample(load_dataset("mmlu"), n * 2, seed))
    suites["perplexity"] = Suite("perplexity", "perplexity",
                                 _sample([r for r in benign if r.response and len(r.response) < 1500], n, seed))
    return suites


def _attacks(requests: Sequence[Record], seed: int) -> list[Record]:
    """The attack suites' prompts: two templates, two GCG suffixes and every encoding drawn by ``seed``."""
    return jailbreak_suite(requests, seed=seed, n_templates=2, n_suffixes=2, max_template_chars=MAX_TEMPLATE_CHARS)


def attack_variants(seeds: Sequence[int]) -> set[str]:
    """The ids of the jailbreak templates and GCG suffixes that :func:`build_suites` wraps its attack
    prompts in for any of ``seeds`` (training data that must stay out of the evaluation avoids them)."""
    probe = [Record("request/0", "a request", 1, "request")]
    return {r.meta["variant"] for seed in seeds for r in _attacks(probe, seed) if r.meta["family"] in ("template", "gcg")}


def prompt_suites(records: Sequence[Record], name: str = "prompts") -> dict[str, Suite]:
    """Suites from a user's labelled records (e.g. :func:`workbench.data.load_prompt_file`):
    ``{name}_harmful`` (refusal rate) and ``{name}_benign`` (compliance rate), each where the
    records have that label."""
    out = {}
    for label, suffix, kind in ((1, "harmful", "refusal"), (0, "benign", "compliance")):
        recs = [r for r in records if r.label == label]
        if recs:
            out[f"{name}_{suffix}"] = Suite(f"{name}_{suffix}", kind, recs)
    if not out:
        raise ValueError(f"{name}: no record is labelled harmful (1) or benign (0)")
    return out


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for a proportion k/n (NaN for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    lo, hi = wilson_interval(np.array([k]), n)
    return float(lo[0]), float(hi[0])


def _rate(hits: np.ndarray) -> dict:
    k, n = int(hits.sum()), len(hits)
    lo, hi = wilson(k, n)
    return {"value": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi, "n": n}


def _last_number(text: str) -> str | None:
    import re

    nums = re.findall(r"-?\d[\d,]*\.?\d*", text)
    return nums[-1].replace(",", "").rstrip(".") if nums else None


def _mmlu(wb: Workbench, suite: Suite, batch_size: int) -> dict:
    """Accuracy by the answer letter with the highest next-token log-probability."""
    prompts = [f"{r.prompt}\nAnswer with the letter of the correct option." for r in suite.records]
    picks = wb.next_token_logprobs(prompts, list("ABCD"), batch_size=batch_size).argmax(-1).tolist()
    return _rate(np.array(["ABCD"[p] == r.meta["answer"] for p, r in zip(picks, suite.records)]))


def _perplexity(wb: Workbench, suite: Suite, batch_size: int) -> dict:
    """Perplexity of the reference answers (response tokens only) under the model."""
    nll, count = 0.0, 0
    for lo in range(0, len(suite), batch_size):
        recs = suite.records[lo:lo + batch_size]
        batch = wb.tokenize([r.prompt for r in recs], [r.response or "" for r in recs], padding_side="right")
        logp = wb.forward(batch)[:, :-1].log_softmax(-1)
        target, mask = batch.input_ids[:, 1:], batch.response_mask[:, 1:]
        token_nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        nll += float(token_nll[mask].sum())
        count += int(mask.sum())
    return {"value": float(np.exp(nll / count)), "ci_low": float("nan"), "ci_high": float("nan"), "n": count}


def run_suite(wb: Workbench, suite: Suite, max_new_tokens: int = 48, batch_size: int = 64, judge=None,
              gsm8k_tokens: int = 256) -> dict:
    """Metrics of one suite; generation suites also return ``samples`` (prompt, response, refused).
    ``max_new_tokens`` is enough to judge a refusal; GSM8K answers get ``gsm8k_tokens``."""
    judge = judge or default_judge()
    if suite.kind == "mmlu":
        return _mmlu(wb, suite, batch_size)
    if suite.kind == "perplexity":
        return _perplexity(wb, suite, batch_size)
    prompts = [r.prompt for r in suite.records]
    tokens = gsm8k_tokens if suite.kind == "gsm8k" else max_new_tokens
    responses = wb.generate(prompts, max_new_tokens=tokens, batch_size=batch_size, progress=False)
    if suite.kind == "gsm8k":
        hits = np.array([_last_number(t) == r.meta["target_answer"] for t, r in zip(responses, suite.records)])
        return {**_rate(hits), "samples": [[p, t, bool(h)] for p, t, h in zip(prompts, responses, hits)]}
    return _judged(suite.kind, prompts, responses, judge)


def _judged(kind: str, prompts: list[str], responses: list[str], judge) -> dict:
    refused = np.asarray(judge(prompts, responses), dtype=bool)
    # refusal: refusal rate; attack: success = complied; compliance: complied; overrefusal: refused
    hits = {"refusal": refused, "attack": ~refused, "compliance": ~refused, "overrefusal": refused}[kind]
    return {**_rate(hits), "samples": [[p, t, bool(r)] for p, t, r in zip(prompts, responses, refused)]}


JUDGED_KINDS = ("refusal", "attack", "compliance", "overrefusal")


def rejudge(metrics: dict[str, dict], judge) -> dict[str, dict]:
    """``metrics`` (from :func:`evaluate`) with every judged suite scored again by ``judge`` from its
    stored generations (nothing is generated); other suites are kept."""
    out = {}
    for name, m in metrics.items():
        if m.get("kind") in JUDGED_KINDS and m.get("samples"):
            prompts, responses = [s[0] for s in m["samples"]], [s[1] for s in m["samples"]]
            out[name] = {**m, **_judged(m["kind"], prompts, responses, judge)}
        else:
            out[name] = m
    return out


METRIC_NAMES = {"refusal": "refusal rate", "attack": "attack success rate", "compliance": "compliance rate",
                "overrefusal": "over-refusal rate", "gsm8k": "exact match", "mmlu": "accuracy",
                "perplexity": "perplexity"}


def evaluate(wb: Workbench, suites: dict[str, Suite], max_new_tokens: int = 48, batch_size: int = 64,
             progress: bool = True, gsm8k_tokens: int = 256, judge=None) -> dict[str, dict]:
    """Run every suite; ``{suite: {"metric", "value", "ci_low", "ci_high", "n", ["samples"]}}``.
    ``judge(prompts, responses) -> bool array`` (True = refused) defaults to :func:`~workbench.evals.judges.default_judge`."""
    out = {}
    with torch.no_grad():
        for name, suite in tqdm(suites.items(), desc="evaluate", disable=not progress):
            out[name] = {"metric": METRIC_NAMES[suite.kind], "kind": suite.kind,
                         **run_suite(wb, suite, max_new_tokens, batch_size, judge=judge, gsm8k_tokens=gsm8k_tokens)}
    return out
