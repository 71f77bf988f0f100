"""Explainers: propose a short label for a concept from its top-activating and contrasting examples.

* :class:`OfflineExplainer` needs no network and no model: weighted log-odds (with an informative
  Dirichlet prior, Monroe et al. 2008) of words and word pairs near the activating tokens of the
  top examples against the contrasting examples. The label is the top terms, e.g.
  ``"bomb, explosive, weapon"``; ``evidence`` keeps the scores.
* :class:`LLMExplainer` asks a chat model (an OpenAI-compatible server through
  :class:`~workbench.autointerp.client.ChatClient`, or the local model through
  :class:`~workbench.autointerp.client.LocalChatClient`) with a delphi-style prompt: the top
  examples with the activating tokens marked ``<<like this>>``, the contrasting ones, and a
  request for one short phrase after ``Label:``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from .examples import _SPECIAL, Example

STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just let me more most my myself no nor not now of off
on once only or other our ours ourselves out over own same she should so some such than that the their theirs
them themselves then there these they this those through to too under until up very was we were what when where
which while who whom why will with would you your yours yourself yourselves also may might must shall us one two
get got make made like use used using way ways please write tell give provide explain create describe list
im_start im_end system user assistant smollm helpful named trained hugging face ai
""".split())
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'\-]*[A-Za-z0-9]|[A-Za-z]")


@dataclass
class Explanation:
    """A proposed label and what supports it."""

    label: str
    explainer: str
    evidence: dict = field(default_factory=dict)
    raw: str | None = None  # the model's full answer (LLM explainers)

    def to_json(self) -> dict:
        return {"label": self.label, "explainer": self.explainer, "evidence": self.evidence}


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (chat-template markers removed)."""
    return [w.lower() for w in _WORD.findall(_SPECIAL.sub(" ", text))]


def _weighted_terms(ex: Example, frac: float, radius: int, bigrams: bool) -> dict[str, float]:
    """Terms of one example with a weight in [0, 1]: a token's own activation relative to the
    example's extreme value (tokens below ``frac`` of it count as inactive), or, for tokens up to
    ``radius`` away from an active token, a context weight of at most 0.3; 0.05 elsewhere."""
    n = len(ex.tokens)
    ref = ex.values[ex.peak] if ex.values else 0.0
    rel = [max(0.0, min(1.0, v / ref)) if ref != 0 else 0.0 for v in ex.values]
    hot = [j for j in range(n) if rel[j] >= frac] or [ex.peak]
    tok_w = []
    for j in range(n):
        d = min(abs(j - h) for h in hot)
        near = 0.3 * max(0.0, 1.0 - d / (radius + 1)) if radius > 0 else 0.0
        tok_w.append(max(rel[j] if rel[j] >= frac else 0.0, near, 0.05))
    # character spans -> token weights, then words -> the max weight over their characters
    text, owner = "", []
    for j, t in enumerate(ex.tokens):
        text += t
        owner += [j] * len(t)
    clean = _SPECIAL.sub(lambda m: " " * len(m.group()), text)
    out: dict[str, float] = {}
    found = [(m.group().lower(), max(tok_w[owner[k]] for k in range(m.start(), m.end())))
             for m in _WORD.finditer(clean)]
    for w, wt in found:
        if w not in STOPWORDS and len(w) > 1:
            out[w] = max(out.get(w, 0.0), wt)
    if bigrams:
        content = [(w, wt) for w, wt in found if w not in STOPWORDS and len(w) > 1]
        for (a, wa), (b, wb) in zip(content, content[1:]):
            out[f"{a} {b}"] = max(out.get(f"{a} {b}", 0.0), min(wa, wb))
    return out


class OfflineExplainer:
    """Label = the terms most over-represented near the activating tokens of the top examples,
    relative to the contrasting examples (weighted log-odds, informative Dirichlet prior).

    Args:
        n_terms: terms in the label. frac: tokens at >= ``frac`` of an example's peak count as
            activating. radius: tokens around them that share the weight. alpha: prior strength.
        bigrams: also score adjacent word pairs (a pair wins over its words when it is as strong).
        min_examples: a term must occur in at least this many top examples.
        min_z_ratio: a term needs at least this fraction of the best term's z-score (weak terms
            would only dilute the label).
    """

    name = "offline-logodds"

    def __init__(self, n_terms: int = 3, frac: float = 0.5, radius: int = 3, alpha: float = 0.5,
                 bigrams: bool = True, min_examples: int = 2, min_z_ratio: float = 0.5):
        self.n_terms, self.frac, self.radius, self.alpha = n_terms, frac, radius, alpha
        self.bigrams, self.min_examples, self.min_z_ratio = bigrams, min_examples, min_z_ratio

    def term_scores(self, top: Sequence[Example], contrast: Sequence[Example],
                    min_examples: int | None = None) -> list[tuple[str, float, float, int]]:
        """``[(term, z, weighted count in top, examples in contrast)]`` sorted by z (log-odds / sd)."""
        min_examples = self.min_examples if min_examples is None else min_examples
        top_w = cast("dict[str, float]", Counter())  # float weights (Counter's stubs say int); missing terms read 0
        top_df: Counter = Counter()
        for ex in top:
            for t, w in _weighted_terms(ex, self.frac, self.radius, self.bigrams).items():
                top_w[t] += w
                top_df[t] += 1
        con: Counter = Counter()
        for ex in contrast:
            for t in set(_weighted_terms(ex, 0.0, 10**6, self.bigrams)):  # every term of the window
                con[t] += 1
        n1, n0 = sum(top_w.values()), sum(con.values())
        total = n1 + n0 or 1.0
        a0 = self.alpha * len(set(top_w) | set(con))  # prior strength: alpha pseudo-counts per term
        out = []
        for t in set(top_w) | set(con):
            if top_df[t] < min(min_examples, len(top)):
                continue
            a = a0 * (top_w[t] + con[t]) / total  # informative prior: the pooled frequency
            y1, y0 = top_w[t] + a, con[t] + a
            delta = math.log(y1 / (n1 + a0 - y1)) - math.log(y0 / (n0 + a0 - y0))
            z = delta / math.sqrt(1 / y1 + 1 / y0)
            out.append((t, z, top_w[t], con[t]))
        out.sort(key=lambda r: (-r[1], r[0]))
        return out

    def explain(self, top: Sequence[Example], contrast: Sequence[Example] = ()) -> Explanation:
        scored = [r for r in self.term_scores(top, contrast) if r[1] > 0]
        relaxed = not scored and self.min_examples > 1
        if relaxed:  # no term recurs: fall back to terms of single examples (a weaker label)
            scored = [r for r in self.term_scores(top, contrast, min_examples=1) if r[1] > 0]
        best = scored[0][1] if scored else 0.0
        chosen: list[str] = []
        for term, z, *_ in scored:
            if z < self.min_z_ratio * best:
                break
            parts = term.split()
            # a word already inside a chosen pair (or a pair made of chosen words) adds nothing
            if any(term in c.split() for c in chosen) or any(p in chosen for p in parts):
                continue
            chosen.append(term)
            if len(chosen) == self.n_terms:
                break
        evidence = {"terms": [{"term": t, "z": round(z, 3), "top_weight": round(w, 3), "contrast_examples": c}
                              for t, z, w, c in scored[:15]], "recurring": not relaxed}
        # an empty label when nothing distinguishes the top examples: nothing to accept or score
        return Explanation(", ".join(chosen), self.name, evidence)


EXPLAIN_SYSTEM = ("You are a meticulous interpretability researcher. You study one feature of a language "
                  "model's internal activations by reading text where it is strongly active and text where "
                  "it is not.")
EXPLAIN_PROMPT = """Below are text excerpts where the feature is strongly active; the most active tokens are marked <<like this>>. After them come contrasting excerpts where the feature is inactive or negative.

Find what the active excerpts have in common that the contrasting ones lack: a topic, a kind of request, a word or phrase, a position in the text. Answer with one short phrase (at most 8 words) on a final line of the form
Label: <phrase>

Active excerpts:
{top}

Contrasting excerpts:
{contrast}"""


def mark_example(ex: Example, frac: float = 0.5, max_chars: int = 400) -> str:
    """The example's text with tokens at >= ``frac`` of its extreme value wrapped in ``<< >>``."""
    ref = ex.values[ex.peak] if ex.values else 0.0
    out = []
    for tok, v in zip(ex.tokens, ex.values):
        hot = ref != 0 and v / ref >= frac and tok.strip()
        out.append(f"<<{tok.strip()}>>" if hot else tok)
    text = _SPECIAL.sub(" ", "".join(out))
    text = re.sub(r"\s+", " ", text).strip()
    return text[-max_chars:]


def parse_label(answer: str) -> str:
    """The phrase after the last ``Label:`` (else the last non-empty line), without quotes."""
    found = re.findall(r"label\s*:\s*(.+)", answer, flags=re.IGNORECASE)
    line = found[-1] if found else next((ln for ln in reversed(answer.strip().splitlines()) if ln.strip()), "")
    return line.strip().strip("\"'*` .").strip()[:120]


class LLMExplainer:
    """Ask a chat model for a label (delphi-style prompt). ``client`` has ``chat(messages) -> str``:
    :class:`~workbench.autointerp.client.ChatClient` (OpenAI-compatible HTTP: OpenAI, vLLM, Ollama)
    or :class:`~workbench.autointerp.client.LocalChatClient` (the local model)."""

    def __init__(self, client, max_examples: int = 10, frac: float = 0.5, max_chars: int = 400):
        self.client, self.max_examples, self.frac, self.max_chars = client, max_examples, frac, max_chars

    @property
    def name(self) -> str:
        return f"llm:{getattr(self.client, 'model', type(self.client).__name__)}"

    def prompt(self, top: Sequence[Example], contrast: Sequence[Example]) -> list[dict]:
        fmt = lambda exs: "\n".join(f"{i + 1}. {mark_example(e, self.frac, self.max_chars)}"  # noqa: E731
                                    for i, e in enumerate(exs[: self.max_examples])) or "(none)"
        return [{"role": "system", "content": EXPLAIN_SYSTEM},
                {"role": "user", "content": EXPLAIN_PROMPT.format(top=fmt(top), contrast=fmt(contrast))}]

    def explain(self, top: Sequence[Example], contrast: Sequence[Example] = ()) -> Explanation:
        answer = self.client.chat(self.prompt(top, contrast))
        return Explanation(parse_label(answer) or "(no label)", self.name, {"n_top": len(top), "n_contrast": len(contrast)},
                           raw=answer)
