"""Two-option accuracy from next-token logits (no generation), for the generated tasks.

For each record the model reads the prompt; at the assistant's first token the logit of the
correct answer is compared with the logit of the other option (``A`` vs ``B``, or the right pronoun
vs the distractor when ``answer_format="pronoun"``). Three numbers per split, with Wilson intervals:

* ``accuracy``: the correct option wins;
* ``flipped``: the *spurious* option wins where it differs from the correct one (OOD only; in
  train / ID data both cues agree, so ``flipped`` is ``1 - accuracy`` on OOD and undefined on ID);
* ``margin``: mean logit difference (correct - other).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data import Record
from ..stats import wilson_interval

if TYPE_CHECKING:
    from ..model import Workbench


def answer_tokens(tokenizer, answers: Sequence[str]) -> list[int]:
    """The first token id of each answer as the assistant's response would start it."""
    ids = []
    for a in answers:
        toks = tokenizer(a, add_special_tokens=False)["input_ids"]
        if not toks:
            raise ValueError(f"answer {a!r} has no tokens")
        ids.append(toks[0])
    return ids


def option_pairs(records: Sequence[Record]) -> tuple[list[str], list[str], list[str | None]]:
    """``(correct, other, spurious)`` answer strings per record, from each record's ``meta``."""
    correct, other, spurious = [], [], []
    for r in records:
        m = r.meta
        if m.get("answer_format") == "pronoun":
            correct.append(m["correct"])
            other.append(m["distractor"])
            spurious.append(m["distractor"] if m.get("aligned") is False else None)
        elif "correct_letter" in m:
            c = m["correct_letter"]
            correct.append(c)
            other.append("B" if c == "A" else "A")
            s = m.get("spurious_letter")
            if s is None and "aligned" in m:
                s = c if m["aligned"] else other[-1]
            spurious.append(s if s is not None and s != c else None)
        else:
            raise ValueError(f"record {r.id}: meta has no correct_letter / correct answer to score")
    return correct, other, spurious


def choice_margins(wb: Workbench, records: Sequence[Record], hooks=None, batch_size: int = 32,
                   progress: bool = False) -> np.ndarray:
    """``[n]`` logit(correct) - logit(other) at the first response position."""
    if not records:
        raise ValueError("no records to score")
    correct, other, _ = option_pairs(records)
    c_ids = torch.tensor(answer_tokens(wb.tokenizer, correct))
    o_ids = torch.tensor(answer_tokens(wb.tokenizer, other))
    logits = wb.next_token_logits([r.prompt for r in records], hooks=hooks, batch_size=batch_size,
                                  progress=progress)
    ar = torch.arange(len(records))
    return (logits[ar, c_ids] - logits[ar, o_ids]).numpy()


def choice_metrics(margins: np.ndarray, records: Sequence[Record]) -> dict:
    """Accuracy, flipped rate (where a spurious answer exists) and mean margin with Wilson CIs."""
    margins = np.asarray(margins, dtype=float)
    _, _, spurious = option_pairs(records)
    right = margins > 0
    n = len(right)
    lo, hi = wilson_interval(np.array([right.sum()]), n)
    out = {"n": n, "accuracy": float(right.mean()), "accuracy_ci": [float(lo[0]), float(hi[0])],
           "margin": float(margins.mean())}
    has_spur = np.array([s is not None for s in spurious])
    if has_spur.any():
        flipped = ~right[has_spur]
        lo, hi = wilson_interval(np.array([flipped.sum()]), int(has_spur.sum()))
        out.update(flipped=float(flipped.mean()), flipped_ci=[float(lo[0]), float(hi[0])])
    return out


def evaluate_choice(wb: Workbench, splits: dict[str, Sequence[Record]], hooks=None, batch_size: int = 32,
                    progress: bool = False) -> dict[str, dict]:
    """``{split: choice_metrics}`` plus per-record ``correct`` lists (for paired tests)."""
    out = {}
    with wb.hooks(hooks) if hooks is not None else nullcontext():
        for name, recs in splits.items():
            m = choice_margins(wb, recs, batch_size=batch_size, progress=progress)
            out[name] = {**choice_metrics(m, recs), "correct": (m > 0).astype(int).tolist()}
    return out
