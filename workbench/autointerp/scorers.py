"""Detection scoring (as EleutherAI's delphi): does a label let a judge tell held-out activating
contexts from non-activating ones? Reports accuracy and AUROC per concept.

A scorer maps ``(label, texts) -> scores`` (higher = "the concept is present"), with a
``threshold`` for the yes/no decision behind accuracy:

* :class:`KeywordScorer` (offline): the fraction of the label's content words found in the text
  (prefix match, so "bomb" finds "bombs").
* :class:`LocalModelScorer` (offline): the local model is asked "Is this text about <label>?";
  the score is ``logit(Yes) - logit(No)``.
* :class:`LLMScorer`: a chat model gets numbered texts and answers a JSON list of 0/1 (delphi's
  detection prompt), through :class:`~workbench.autointerp.client.ChatClient`.

:func:`explain_and_score` runs explainer and scorer over a ConceptSet: per concept, explain from the
top examples (and contrasting ones), score on *held-out* records (the next-highest records as
positives, a seeded sample of low records as negatives), and store both in
``concept.meta["autointerp"]``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .examples import Example, TokenContexts, feature_for, make_example, top_examples
from .explainers import STOPWORDS, words

if TYPE_CHECKING:
    from ..model import Workbench


@dataclass
class DetectionResult:
    concept: str
    label: str
    scorer: str
    accuracy: float
    auroc: float
    n_pos: int
    n_neg: int
    scores: list = field(default_factory=list)
    truth: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"label": self.label, "scorer": self.scorer, "accuracy": self.accuracy, "auroc": self.auroc,
                "n_pos": self.n_pos, "n_neg": self.n_neg}


def _text(x) -> str:
    return x.plain_text() if isinstance(x, Example) else str(x)


def auroc(scores: Sequence[float], truth: Sequence[int]) -> float:
    """Area under the ROC curve (ties count one half); NaN without both classes."""
    from sklearn.metrics import roc_auc_score

    if len(set(truth)) < 2:
        return float("nan")
    return float(roc_auc_score(list(truth), list(scores)))


# ============================================================================ scorers
class KeywordScorer:
    """Offline: score = fraction of the label's content words present in the text.

    A label word matches a text word that starts with the label word's first ``stem`` characters
    (both at least 3 long), a crude stemmer. ``threshold``: score > threshold means "present"."""

    name = "offline-keywords"

    def __init__(self, stem: int = 5, threshold: float = 0.0):
        self.stem, self.threshold = stem, threshold

    def terms(self, label: str) -> list[str]:
        return list(dict.fromkeys(w for w in words(label) if w not in STOPWORDS and len(w) > 2))

    def _match(self, term: str, vocab: set[str]) -> bool:
        key = term[: self.stem]
        return term in vocab or any(w.startswith(key) for w in vocab if len(w) >= 3)

    def score(self, label: str, texts: Sequence) -> list[float]:
        terms = self.terms(label)
        if not terms:
            return [0.0] * len(texts)
        out = []
        for t in texts:
            vocab = set(words(_text(t)))
            out.append(sum(self._match(term, vocab) for term in terms) / len(terms))
        return out


class LocalModelScorer:
    """Offline: ask the local model whether each text is about the label; score =
    ``logit(" Yes") - logit(" No")`` at the answer position (threshold 0)."""

    PROMPT = 'Text: "{text}"\n\nIs this text about "{label}"? Answer Yes or No.'

    def __init__(self, wb: Workbench, batch_size: int = 8, max_chars: int = 400, threshold: float = 0.0):
        self.wb, self.batch_size, self.max_chars, self.threshold = wb, batch_size, max_chars, threshold

    @property
    def name(self) -> str:
        return f"local:{self.wb.model_id}"

    def score(self, label: str, texts: Sequence) -> list[float]:
        prompts = [self.PROMPT.format(text=_text(t)[-self.max_chars:], label=label) for t in texts]
        lp = self.wb.next_token_logprobs(prompts, [["Yes", " Yes"], ["No", " No"]], batch_size=self.batch_size)
        return (lp[:, 0] - lp[:, 1]).tolist()


DETECT_SYSTEM = ("You are an intelligent and meticulous linguistics researcher. You are given a description "
                 "of a feature of a language model and a list of text excerpts; you decide which excerpts "
                 "show the feature.")
DETECT_PROMPT = """Feature description: {label}

For each numbered excerpt, answer 1 if the feature is present in it and 0 if not. Reply with a JSON list of {n} numbers (0 or 1) and nothing else, e.g. [1, 0, ...].

{texts}"""


def parse_predictions(answer: str, n: int) -> list[float]:
    """The first JSON list of ``n`` numbers in ``answer`` (else the first ``n`` 0/1 digits); raises
    ``ValueError`` if there are fewer than ``n``."""
    for m in re.finditer(r"\[[^\[\]]*\]", answer):
        try:
            vals = json.loads(m.group())
        except json.JSONDecodeError:
            continue
        if isinstance(vals, list) and len(vals) == n and all(isinstance(v, (int, float)) for v in vals):
            return [float(v) for v in vals]
    digits = re.findall(r"(?<![\d.])[01](?![\d.])", answer)
    if len(digits) >= n:
        return [float(d) for d in digits[:n]]
    raise ValueError(f"could not read {n} predictions from the answer: {answer[:200]!r}")


class LLMScorer:
    """delphi's detection scoring with a chat model: texts in shuffled batches of ``batch_size``,
    the answer a JSON list of 0/1 (threshold 0.5)."""

    threshold = 0.5

    def __init__(self, client, batch_size: int = 10, max_chars: int = 400, seed: int = 0):
        self.client, self.batch_size, self.max_chars, self.seed = client, batch_size, max_chars, seed

    @property
    def name(self) -> str:
        return f"llm:{getattr(self.client, 'model', type(self.client).__name__)}"

    def score(self, label: str, texts: Sequence) -> list[float]:
        order = list(range(len(texts)))
        random.Random(self.seed).shuffle(order)  # activating and non-activating mixed in every batch
        out = [0.0] * len(texts)
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo:lo + self.batch_size]
            body = "\n".join(f"{k + 1}. {' '.join(_text(texts[i]).split())[-self.max_chars:]}" for k, i in enumerate(idx))
            msgs = [{"role": "system", "content": DETECT_SYSTEM},
                    {"role": "user", "content": DETECT_PROMPT.format(label=label, n=len(idx), texts=body)}]
            preds = parse_predictions(self.client.chat(msgs), len(idx))
            for i, p in zip(idx, preds):
                out[i] = p
        return out


# ============================================================================ running it
def detection_score(label: str, positives: Sequence, negatives: Sequence, scorer, concept: str = "") -> DetectionResult:
    """Score held-out ``positives`` (activating contexts) and ``negatives`` with ``scorer`` for ``label``."""
    texts = list(positives) + list(negatives)
    truth = [1] * len(positives) + [0] * len(negatives)
    scores = [float(s) for s in scorer.score(label, texts)]
    thr = getattr(scorer, "threshold", 0.0)
    acc = sum((s > thr) == bool(t) for s, t in zip(scores, truth)) / max(len(truth), 1)
    return DetectionResult(concept, label, getattr(scorer, "name", type(scorer).__name__), acc, auroc(scores, truth),
                           len(positives), len(negatives), scores, truth)


def holdout_examples(ctx: TokenContexts, feature, n_explain: int = 10, n_test: int = 10, n_contrast: int = 10,
                     seed: int = 0, window: tuple[int, int] = (32, 8)) -> dict[str, list[Example]]:
    """Split a feature's records into explanation and held-out test examples (no record in both).

    ``explain_top``: the ``n_explain`` highest-peaking records; ``explain_contrast``: the
    ``n_contrast`` lowest-peaking; ``test_pos``: the next ``n_test`` highest after ``explain_top``;
    ``test_neg``: a seeded sample of ``n_test`` from the lower half of the rest."""
    scores = ctx.record_scores(feature, "max")
    order = scores.argsort(descending=True).tolist()
    top, pos = order[:n_explain], order[n_explain:n_explain + n_test]
    contrast = list(reversed(order))[:n_contrast]
    used = set(top) | set(pos) | set(contrast)
    lower = [i for i in order[len(order) // 2:] if i not in used]
    neg = random.Random(seed).sample(lower, min(n_test, len(lower)))
    mk = lambda idx: [make_example(ctx, feature, i, "top", window) for i in idx]  # noqa: E731
    return {"explain_top": mk(top), "explain_contrast": mk(contrast), "test_pos": mk(pos), "test_neg": mk(neg)}


def explain_and_score(concepts, ctx: TokenContexts, explainer, scorer=None, *, sae=None, n_explain: int = 10,
                      n_test: int = 10, n_contrast: int = 10, seed: int = 0, write: bool = True, progress: bool = False):
    """Explain every concept of ``concepts`` (a ConceptSet) at ``ctx.site`` and score the label.

    With ``write`` the result goes into ``concept.meta["autointerp"]`` (label, explainer, evidence,
    detection accuracy / AUROC); the concept's own ``label`` is left for a person to set.
    Returns a pandas DataFrame (one row per concept)."""
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    for c in tqdm([c for c in concepts if c.site == ctx.site], desc="autointerp", disable=not progress):
        feature = feature_for(c, sae)
        h = holdout_examples(ctx, feature, n_explain, n_test, n_contrast, seed)
        exp = explainer.explain(h["explain_top"], h["explain_contrast"])
        det = (detection_score(exp.label, h["test_pos"], h["test_neg"], scorer, c.name)
               if scorer is not None and exp.label else None)
        if write:
            c.meta["autointerp"] = {**exp.to_json(), "evidence": _trim(exp.evidence),
                                    "detection": det.to_json() if det else None}
        rows.append({"name": c.name, "autointerp": exp.label, "explainer": exp.explainer,
                     "accuracy": det.accuracy if det else None, "auroc": det.auroc if det else None})
    return pd.DataFrame(rows, columns=["name", "autointerp", "explainer", "accuracy", "auroc"])


def _trim(evidence: dict, n: int = 8) -> dict:
    return {k: (v[:n] if isinstance(v, list) else v) for k, v in evidence.items()}


__all__ = ["DetectionResult", "KeywordScorer", "LocalModelScorer", "LLMScorer", "detection_score",
           "holdout_examples", "explain_and_score", "auroc", "parse_predictions", "top_examples"]
