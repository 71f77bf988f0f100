"""SFT data for the training path: records -> chat-formatted token ids with response-only labels."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..data import Record, load_dataset
from . import coca, self_answers
from .recipe import Recipe

if TYPE_CHECKING:
    from ..model import Workbench

IGNORE_INDEX = -100


def build_records(recipe: Recipe, wb: Workbench | None = None) -> list[Record]:
    """The (prompt, response) records a recipe trains on.

    ``dataset`` names registry datasets or ``.jsonl`` files (see :func:`coca.write_jsonl`),
    comma-separated; ``max_samples`` draws a seeded random sample per dataset. With ``coca_variant``
    every record is refactored by :func:`coca.refactor`; without it, plain safety SFT
    (:func:`coca.plain_sft`: harmful -> refusal, benign -> reference answer). ``refusals`` names
    the refusal texts (:data:`coca.REFUSAL_SETS`). ``benign_answers: self`` answers the benign records
    with ``wb``, the model the run starts from (:func:`self_answers.with_self_answers`; stored in
    ``self_answers_path``, default the run folder, and reused from there). ``wrapped_harmful`` adds
    jailbreak-wrapped copies of harmful records (:func:`wrapped_harmful`), ``encoded_harmful`` encoded
    ones (:func:`encoded_harmful`), ``long_benign`` long document-task prompts (:func:`long_benign`,
    answered with ``benign_answers: self``).
    """
    records: list[Record] = []
    for name in recipe.datasets():
        path = Path(name).expanduser()
        if name.endswith((".jsonl", ".json")) or path.is_file():
            recs = coca.read_jsonl(path)
        else:
            recs = load_dataset(name, split=recipe.dataset_split)
        if recipe.max_samples is not None and len(recs) > recipe.max_samples:
            rng = random.Random(f"{recipe.seed}/{name}")
            recs = rng.sample(recs, recipe.max_samples)
        records.extend(recs)
    if recipe.long_benign:
        records += long_benign(records, recipe.long_benign, recipe.seed)
    if recipe.benign_answers == "self":
        if wb is None:
            raise ValueError("benign_answers: self needs the model the run starts from (build_records(recipe, wb))")
        path = Path(recipe.self_answers_path or Path(recipe.output_dir) / self_answers.FILE)
        records = self_answers.with_self_answers(wb, records, path, max_prompt_tokens=recipe.cutoff_len)
    if recipe.wrapped_harmful:
        records += wrapped_harmful(records, recipe.wrapped_harmful, recipe.seed)
    if recipe.encoded_harmful:
        records += encoded_harmful(records, recipe.encoded_harmful, recipe.seed)
    if recipe.coca_variant:
        return coca.refactor(records, recipe.coca_variant, recipe.refusals)
    return coca.plain_sft(records, recipe.refusals)


HELD_OUT_SEEDS = range(5)  # evaluation seeds whose attack variants training never uses


def wrapped_harmful(records: Sequence[Record], share: float, seed: int) -> list[Record]:
    """Copies of a seeded ``share`` of the harmful (label 1) ``records``, each wrapped in a jailbreak
    template or followed by a GCG suffix (alternately), drawn from the registry's templates and
    suffixes minus every one the evaluation suites use for seeds 0-4
    (:func:`workbench.evals.suites.attack_variants`; 39 of 48 templates and 5 of 13 suffixes are
    left), so that those seeds' attack suites stay unseen.

    A copy keeps the original's label and names its concepts as the original does (``category``),
    so COCA's reasoning step for it names the request's concepts, not the template's words.
    """
    from ..data import add_suffix, fill_template, templates
    from ..evals.suites import MAX_TEMPLATE_CHARS, attack_variants

    if not 0 < share <= 1:
        raise ValueError(f"wrapped_harmful must be in (0, 1], got {share}")
    harmful = [r for r in records if r.label == 1]
    if not harmful:
        raise ValueError("wrapped_harmful: the records hold no harmful (label 1) record to wrap")
    used = attack_variants(HELD_OUT_SEEDS)
    pools = {"template": [t for t in templates(max_chars=MAX_TEMPLATE_CHARS) if t.id not in used],
             "gcg": [s for s in load_dataset("gcg_suffixes") if s.id not in used]}
    rng = random.Random(f"{seed}/wrapped_harmful")
    out = []
    for i, rec in enumerate(rng.sample(harmful, max(1, round(share * len(harmful))))):
        family = ("template", "gcg")[i % 2]
        variant = rng.choice(pools[family])
        wrap = fill_template(variant.prompt, rec.prompt) if family == "template" else add_suffix(rec.prompt, variant.prompt)
        out.append(_attack_copy(rec, family, variant.id, wrap))
    return out


def _attack_copy(rec: Record, family: str, variant: str, prompt: str) -> Record:
    """``rec`` with an attack's ``prompt``, its label and its own concepts (so COCA's reasoning for the
    copy names the request's concepts, not the attack's words)."""
    return replace(rec, id=f"wrapped/{family}/{variant}/{rec.id}", prompt=prompt, category=", ".join(coca.concepts_for(rec)),
                   meta={**rec.meta, "family": family, "variant": variant, "request_id": rec.id})


TRAIN_ENCODINGS = ("base64", "rot13", "leetspeak", "reverse")  # hex, caesar and atbash stay unseen


def encoded_harmful(records: Sequence[Record], share: float, seed: int,
                    encodings: Sequence[str] = TRAIN_ENCODINGS) -> list[Record]:
    """Copies of a seeded ``share`` of the harmful (label 1) ``records``, each encoded by one of
    ``encodings`` in turn (:data:`workbench.data.ENCODINGS`: the evaluation's encoding attack, the
    payload after an instruction to decode and answer). The evaluation's encoding suite uses all seven
    encodings, so with the default four the other three (hex, caesar, atbash) stay unseen.

    A copy keeps its original's label and concepts, so COCA's reasoning for it decides "unsafe":
    a model that cannot decode the payload can learn that only from the attack's shape, which is
    what these records measure (see the README)."""
    from ..data import ENCODINGS

    if not 0 < share <= 1:
        raise ValueError(f"encoded_harmful must be in (0, 1], got {share}")
    bad = [e for e in encodings if e not in ENCODINGS]
    if bad or not encodings:
        raise ValueError(f"unknown or no encodings {bad or list(encodings)}; choose from {list(ENCODINGS)}")
    harmful = [r for r in records if r.label == 1 and not r.id.startswith("wrapped/")]
    if not harmful:
        raise ValueError("encoded_harmful: the records hold no harmful (label 1) record to encode")
    rng = random.Random(f"{seed}/encoded_harmful")
    out = []
    for i, rec in enumerate(rng.sample(harmful, max(1, round(share * len(harmful))))):
        name = encodings[i % len(encodings)]
        out.append(_attack_copy(rec, "encoding", name, ENCODINGS[name](rec.prompt)))
    return out


# document tasks around a benign record's reference answer: long benign prompts of the kinds the
# benign test split holds (a text to correct, summarize, answer about, a forum post to reply to)
LONG_TASKS = (
    "Fix all grammar and spelling errors in this text and rewrite it.\n{doc}",
    "Summarize the following text in three sentences.\n\n{doc}",
    "{doc}\n\nWhat is the main idea of the text above?",
    "Give this passage a short title and explain your choice.\n\n{doc}",
    "Here is a post from a discussion forum:\n\n{doc}\n\nWrite a helpful reply to it.",
    "In this task, you are given a passage. Your job is to list its three most important points.\nPassage: {doc}",
    "Paragraph: {doc}\nQuestion: Who is this paragraph written for? Explain briefly.",
    "Read the text below and suggest two questions a curious reader might ask next.\n\n{doc}",
)
LONG_DOC_CHARS = (400, 1200)  # documents shorter are not used, longer ones cut at a sentence end


def long_benign(records: Sequence[Record], n: int, seed: int) -> list[Record]:
    """``n`` benign (label 0) prompts, each a document task (:data:`LONG_TASKS`, in turn) around the
    reference answer of a benign record (``LONG_DOC_CHARS``: at least 400 characters, cut after the last
    sentence that ends by 1,200), drawn with ``seed``; without a response (``benign_answers: self``
    answers them). The benign test split's failures are long prompts of these kinds, while few
    training prompts are long (19 of 238 reach 128 tokens)."""
    if n <= 0:
        raise ValueError(f"long_benign must be > 0, got {n}")
    lo, hi = LONG_DOC_CHARS
    docs = sorted({r.response.strip() for r in records if r.label == 0 and r.response and len(r.response.strip()) >= lo})
    if not docs:
        raise ValueError(f"long_benign: no benign record has a reference answer of {lo} characters or more")
    rng = random.Random(f"{seed}/long_benign")
    picks = [docs[i % len(docs)] for i in rng.sample(range(max(n, len(docs))), n)]
    out = []
    for i, doc in enumerate(picks):
        if len(doc) > hi:
            ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", doc[:hi])]
            doc = doc[:ends[-1]] if ends else doc[:hi]
        task = LONG_TASKS[i % len(LONG_TASKS)]
        out.append(Record(id=f"long_benign/{i}", prompt=task.format(doc=doc), label=0, source="long_benign",
                          category="document task", meta={"task": i % len(LONG_TASKS)}))
    return out


def records_hash(records: Sequence[Record]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.prompt, r.response]).encode())
    return h.hexdigest()[:16]


def encode(wb: Workbench, records: Sequence[Record], cutoff_len: int, answer_weight: float = 1.0,
           answer_tokens: int = 8) -> list[dict]:
    """Chat-format each record and keep labels on response tokens only (``-100`` elsewhere).
    Examples longer than ``cutoff_len`` are cut at the end; an example left with no response
    token is dropped (with a count in the error if none remain).

    ``answer_weight != 1``: each example also gets ``loss_weights`` ``[pos]`` (float): 1 on response
    tokens, ``answer_weight`` on the first ``answer_tokens`` tokens of the answer (after a COCA
    reasoning step, :func:`coca.answer_start`; the response's first tokens without one), 0 elsewhere.
    """
    out, dropped = [], 0
    for r in records:
        # A token spans a few characters: cut very long responses before the chat formatter
        # (whose max_length is 1024 tokens); the token cut below is the exact one.
        if r.response is None:
            raise ValueError(f"{r.id}: no response to train on")
        response = r.response[: 16 * cutoff_len]
        try:
            batch = wb.tokenize([r.prompt], [response], padding_side="right")
        except ValueError:  # the prompt alone is longer than the formatter's max_length
            dropped += 1
            continue
        ids = batch.input_ids[0][:cutoff_len]
        resp = batch.response_mask[0][:cutoff_len]
        if not resp.any():
            dropped += 1
            continue
        labels = torch.where(resp, ids, torch.full_like(ids, IGNORE_INDEX))
        example = {"input_ids": ids, "labels": labels}
        if answer_weight != 1.0:
            example["loss_weights"] = _answer_weights(wb, response, resp, answer_weight, answer_tokens)
        out.append(example)
    if not out:
        raise ValueError(f"no training example keeps a response token within cutoff_len={cutoff_len} "
                         f"({dropped} dropped); raise cutoff_len")
    return out


def _answer_weights(wb: Workbench, response: str, resp: torch.Tensor, weight: float, n_tokens: int) -> torch.Tensor:
    """``[pos]`` loss weights: 1 on the response mask ``resp``, ``weight`` on the answer's first
    ``n_tokens`` tokens: those of the response's own tokenization that begin at or after the
    answer's first character (a token spanning the boundary counts as reasoning)."""
    weights = resp.float()
    start, skip = coca.answer_start(response), 0
    if start:  # a reasoning step precedes the answer: count its tokens
        offsets = wb.tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        skip = sum(1 for lo, _ in offsets if lo < start)
    first = int(resp.nonzero()[0]) + skip
    span = weights[first: first + n_tokens]
    span[resp[first: first + n_tokens]] = weight
    return weights


class SFTDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]


class Collator:
    """Right-pad a list of examples: ``input_ids`` (pad id), ``attention_mask``, ``labels`` (-100),
    ``loss_weights`` (0) when the examples have them."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        width = max(len(e["input_ids"]) for e in examples)

        def pad(t, value):
            return torch.cat([t, torch.full((width - len(t),), value, dtype=t.dtype)])

        batch = {
            "input_ids": torch.stack([pad(e["input_ids"], self.pad_token_id) for e in examples]),
            "attention_mask": torch.stack([pad(torch.ones_like(e["input_ids"]), 0) for e in examples]),
            "labels": torch.stack([pad(e["labels"], IGNORE_INDEX) for e in examples]),
        }
        if "loss_weights" in examples[0]:
            batch["loss_weights"] = torch.stack([pad(e["loss_weights"], 0.0) for e in examples])
        return batch
