"""Self-distilled benign answers: a run's benign records answered by the model the run starts from.

Safety SFT on reference answers written elsewhere teaches a small model a new answering style
together with the refusals; its benign answers then drift towards the refusal's wording ("I can
help with that request.", then nothing). Training on the model's own greedy answers instead
(self-distillation, as in Yang et al. 2024, "Self-Distillation Bridges Distribution Gap in Language
Model Fine-Tuning") gives the benign side targets the model already assigns high likelihood, so the
loss is spent on the decision and the refusal. Recipe key ``benign_answers: self``.

Each benign prompt's answer is generated once (greedy, ``max_new_tokens``), cut after its last
complete sentence, and kept only where :func:`workbench.evals.default_judge` says it complies; a
benign record whose own answer is judged a refusal keeps its reference answer (or is dropped when
it has none). The answers are stored in the run folder (``self_answers.json``, or the recipe's
``self_answers_path``, which the experiment shares between its methods), so a resumed run, or another
run from the same model, trains on the same answers without generating them again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .._files import parse_file, write_json_atomic
from .._log import get_logger
from ..data import Record

if TYPE_CHECKING:
    from ..model import Workbench

FILE = "self_answers.json"
FORMAT = "workbench.self_answers/1"
_SENTENCE_END = re.compile(r"(?<!\d)[.!?][\"')\]]?(?=\s)|\n")

log = get_logger(__name__)


def complete_sentences(text: str) -> str:
    """``text`` up to the end of its last complete sentence (a generation cut at its token limit
    should not teach the model to stop mid-sentence); unchanged when it ends with one, or when
    no sentence ends in it."""
    text = text.strip()
    if not text or re.search(r"[.!?][\"')\]]?$", text):
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[:ends[-1]].rstrip() if ends else text


def _key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:20]


def generate_answers(wb: Workbench, prompts: Sequence[str], path: str | Path, max_new_tokens: int = 128,
                     batch_size: int = 64, progress: bool = True) -> dict[str, str]:
    """``{prompt: answer}``: the greedy answers of ``wb`` to ``prompts``, cut to complete sentences;
    read from ``path`` where an earlier call stored them for the same model and token limit, the
    missing ones generated and the file rewritten. A file that does not parse raises ``ValueError``."""
    path = Path(path)
    stored: dict[str, str] = {}
    if path.is_file():
        doc = parse_file(path, ValueError)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("answers"), dict):
            raise ValueError(f"{path} is corrupt (not a {FORMAT} file); delete it to generate the answers again")
        if doc.get("model") == wb.model_id and doc.get("max_new_tokens") == max_new_tokens:
            stored = doc["answers"]
    todo = sorted({p for p in prompts if _key(p) not in stored})
    if todo:
        log.info("self answers: generating %d of %d (max_new_tokens=%d)", len(todo), len(set(prompts)), max_new_tokens)
        for prompt, text in zip(todo, wb.generate(todo, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                   progress=progress)):
            stored[_key(prompt)] = complete_sentences(text)
        write_json_atomic(path, {"format": FORMAT, "model": wb.model_id, "max_new_tokens": max_new_tokens,
                                 "answers": stored})
    return {p: stored[_key(p)] for p in prompts}


def with_self_answers(wb: Workbench, records: Sequence[Record], path: str | Path, max_new_tokens: int = 128,
                      max_prompt_tokens: int = 256, progress: bool = True) -> list[Record]:
    """``records`` with every benign one (label 0) answered by ``wb`` where the default judge says the
    answer complies (``meta["answer_source"] = "self"``); the others keep their reference answer
    (``"reference"``) or, without one, are dropped. Harmful records, and prompts of
    ``max_prompt_tokens`` tokens or more (training cuts them before any answer token), pass unchanged.
    Raises ``ValueError`` when no record is left."""
    from ..evals.judges import default_judge

    def fits(prompt: str) -> bool:
        return len(wb.tokenizer(prompt, add_special_tokens=False)["input_ids"]) < max_prompt_tokens

    benign = [r for r in records if r.label == 0 and fits(r.prompt)]
    answers = generate_answers(wb, [r.prompt for r in benign], path, max_new_tokens, progress=progress)
    refused = default_judge()([r.prompt for r in benign], [answers[r.prompt] for r in benign]) if benign else []
    verdict = {r.id: bool(x) for r, x in zip(benign, refused)}
    out: list[Record] = []
    counts = {"self": 0, "reference": 0, "dropped": 0}
    for r in records:
        if r.id not in verdict:
            out.append(r)
        elif not verdict[r.id] and answers[r.prompt]:
            out.append(replace(r, response=answers[r.prompt], meta={**r.meta, "answer_source": "self"}))
            counts["self"] += 1
        elif r.response:
            out.append(replace(r, meta={**r.meta, "answer_source": "reference"}))
            counts["reference"] += 1
        else:
            counts["dropped"] += 1
    log.info("self answers: %(self)d benign records answered by the model, %(reference)d keep the reference "
             "(own answer judged a refusal), %(dropped)d dropped", counts)
    if not out:
        raise ValueError("no training record is left after self-answering (every benign answer was judged a refusal)")
    return out
