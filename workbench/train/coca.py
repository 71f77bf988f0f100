"""COCA data refactoring: responses that name the potentially unsafe concepts first, then decide.

COCA (Concept Concentration) rewrites safety SFT data so that every response opens with a short,
explicit reasoning step -- which potentially unsafe concepts the request touches and whether it is
safe -- and then gives the answer: a refusal for a harmful request, the reference answer for a
benign one. The claim is that this concentrates the harmful/benign decision in the representation,
so that linear erasure and head interventions act on it.

Concepts come from the record's category label (HarmBench ``SemanticCategory``, Do-Not-Answer risk
area, UncensorBench topic), mapped to short phrases; uncategorised harmful prompts (AdvBench) go
through a small keyword labeller; benign prompts get ``none``. The step is one line, e.g.

    Concepts: cybercrime. Unsafe, so I refuse.

    I'm sorry, but I can't help with that.

which is 10-20 tokens for SmolLM2's tokenizer (tested < 25), short enough for a 135M model.

Variants (the names COCA's configs use), all emitted as :class:`workbench.data.Record` s with
``.prompt`` / ``.response`` that the trainer reads (``write_jsonl`` gives a file a recipe's
``dataset`` can name):

* ``normal``       plain refusal / answer, no reasoning step;
* ``normal_warm``  the same data as ``normal``; the recipe warm-starts training;
* ``think``        reasoning step + refusal / answer, trained from the base model;
* ``think_warm``   the same data as ``think``; the recipe warm-starts training.

**Warm start, as chosen here**: a ``*_warm`` recipe must name ``warm_start_from``, a previous run
folder; training starts from that run's trained parameters (its LoFIT head biases -- heads
included -- or its LoRA adapter or full weights) instead of from zero, with a fresh optimizer. In
the shipped examples ``normal_warm`` and ``think_warm`` start from ``examples/lofit/bias_tuning.yaml``'s
run, i.e. from a model whose selected heads were already bias-tuned on plain safety data.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from ..data import Record

VARIANTS = ("normal", "normal_warm", "think", "think_warm")

# Category labels of the registry's harmful datasets -> short concept phrases.
CONCEPTS = {
    # HarmBench SemanticCategory
    "illegal": "illegal activity",
    "cybercrime_intrusion": "cybercrime",
    "misinformation_disinformation": "misinformation",
    "chemical_biological": "chemical or biological weapons",
    "harmful": "physical harm",
    "harassment_bullying": "harassment",
    "copyright": "copyright infringement",
    # Do-Not-Answer risk areas
    "information_hazard": "dangerous information",
    "malicious_uses": "malicious use",
    "discrimination_exclusion_toxicity_hateful_offensive": "hate and discrimination",
    "misinformation_harms": "misinformation",
    "human_chatbox": "emotional dependence",
    # UncensorBench topics (the rest read fine with underscores replaced)
    "illegal_activities": "illegal activity",
    "privacy_invasion": "privacy invasion",
    "academic_dishonesty": "academic dishonesty",
}

# A small keyword labeller for harmful prompts without a category (AdvBench).
_KEYWORDS = [
    ("weapons", r"\b(bombs?|explosives?|weapons?|guns?|firearms?|ammunition|grenades?)\b"),
    ("cybercrime", r"\b(hack\w*|malware|virus|ransomware|exploits?|phishing|passwords?|cyber\w*|botnets?|"
                   r"ddos|spyware|keyloggers?|databases?)\b"),
    ("fraud", r"\b(fraud\w*|scams?|counterfeit\w*|steal\w*|theft|launder\w*|insider trading|identity)\b"),
    ("drugs", r"\b(drugs?|cocaine|heroin|meth\w*|opioids?)\b"),
    ("poisoning", r"\b(poison\w*|toxins?)\b"),
    ("self-harm", r"\b(suicide|self-harm|self harm|anorexi\w*|bulimi\w*|eating disorders?)\b"),
    ("hate and discrimination", r"\b(hate|racis\w*|discriminat\w*|sexis\w*)\b"),
    ("misinformation", r"\b(fake news|misinformation|propaganda|conspirac\w*|false information|hoax\w*)\b"),
    ("harassment", r"\b(harass\w*|bull(y|ying|ies)|stalk\w*|defam\w*)\b"),
    ("violence", r"\b(kill\w*|murder\w*|assault\w*|violen\w*|terror\w*|attacks?)\b"),
    ("privacy invasion", r"\b(track\w*|surveil\w*|spy\w*|personal information|dox\w*)\b"),
]
FALLBACK_CONCEPT = "harmful activity"
NO_CONCEPT = "none"

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I can't help with that request.",
    "Sorry, I can't assist with that, as it could cause harm.",
)

_REASONING = re.compile(r"^\s*Concepts: (?P<concepts>.+?)\. (?P<safety>Unsafe|Safe), so I (?P<decision>refuse|help)\.")


def concepts_for(record: Record, max_concepts: int = 2) -> list[str]:
    """The potentially unsafe concepts a record touches (``[]`` for a benign one)."""
    if record.label == 0:
        return []
    if record.label != 1:
        raise ValueError(f"{record.id}: COCA needs harmful (1) / benign (0) labels, got {record.label!r}")
    if record.category:
        key = record.category.strip()
        return [CONCEPTS.get(key, key.replace("_", " ").lower())]
    text = record.prompt.lower()
    found = [name for name, pattern in _KEYWORDS if re.search(pattern, text)]
    return found[:max_concepts] or [FALLBACK_CONCEPT]


def reasoning_step(record: Record) -> str:
    """The one-line reasoning step: concepts, then the safety decision."""
    concepts = concepts_for(record)
    if concepts:
        return f"Concepts: {', '.join(concepts)}. Unsafe, so I refuse."
    return f"Concepts: {NO_CONCEPT}. Safe, so I help."


def parse_reasoning(text: str) -> dict | None:
    """Read a reasoning step back from a response (e.g. a generation): ``{"concepts": [...],
    "safe": bool, "decision": "refuse" | "help"}``, or ``None`` if the text does not open with one."""
    m = _REASONING.match(text)
    if not m:
        return None
    concepts = [c.strip() for c in m.group("concepts").split(",")]
    return {"concepts": [] if concepts == [NO_CONCEPT] else concepts, "safe": m.group("safety") == "Safe",
            "decision": m.group("decision")}


def refusal(record: Record) -> str:
    """A short refusal, chosen deterministically from :data:`REFUSALS` by the record id."""
    h = int.from_bytes(hashlib.sha256(record.id.encode()).digest()[:4], "big")
    return REFUSALS[h % len(REFUSALS)]


def refactor(records: Iterable[Record], variant: str = "think") -> list[Record]:
    """COCA training records for ``variant``: harmful (label 1) -> refusal, benign (label 0) ->
    its reference ``response``; ``think*`` variants prepend :func:`reasoning_step`.

    The result keeps prompt, label, source and category; ``meta`` gains ``coca_variant``,
    ``concepts``, ``decision`` (``"refuse"`` / ``"answer"``), ``reasoning`` and ``orig_id``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown COCA variant {variant!r}; choose from {VARIANTS}")
    think = variant.startswith("think")
    out = []
    for rec in records:
        concepts = concepts_for(rec)
        if rec.label == 1:
            answer, decision = refusal(rec), "refuse"
        else:
            if not rec.response:
                raise ValueError(f"{rec.id}: a benign record needs a reference response for COCA (dataset "
                                 f"{rec.source!r} has none); use e.g. benign_instructions")
            answer, decision = rec.response.strip(), "answer"
        reasoning = reasoning_step(rec) if think else None
        response = f"{reasoning}\n\n{answer}" if think else answer
        out.append(replace(rec, id=f"coca-{variant}/{rec.id}", response=response,
                           meta={**rec.meta, "coca_variant": variant, "concepts": concepts,
                                 "decision": decision, "reasoning": reasoning, "orig_id": rec.id}))
    return out


def plain_sft(records: Iterable[Record]) -> list[Record]:
    """Plain safety SFT (the baseline): keep a record's own response; harmful records without one
    get a refusal. Same as ``refactor(..., "normal")`` where responses are missing."""
    out = []
    for rec in records:
        if rec.response:
            out.append(rec)
        elif rec.label == 1:
            out.append(replace(rec, response=refusal(rec), meta={**rec.meta, "decision": "refuse"}))
        else:
            raise ValueError(f"{rec.id}: no response to train on (dataset {rec.source!r} has no reference "
                             f"answers and the record is not labelled harmful)")
    return out


# ---------------------------------------------------------------------- files
def write_jsonl(records: Sequence[Record], path: str | Path) -> Path:
    """One JSON object per line: ``id, prompt, response, label, source, category, meta``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"id": r.id, "prompt": r.prompt, "response": r.response, "label": r.label,
                                "source": r.source, "category": r.category, "meta": _jsonable(r.meta)},
                               ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[Record]:
    """Records from a JSON-lines file with at least ``prompt`` and ``response`` per line."""
    path = Path(path)
    out = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = {"prompt", "response"} - set(row)
            if missing:
                raise ValueError(f"{path}:{i + 1}: missing {sorted(missing)}")
            out.append(Record(id=str(row.get("id", f"{path.stem}/{i}")), prompt=row["prompt"],
                              label=row.get("label"), source=row.get("source", path.stem),
                              category=row.get("category"), response=row["response"], meta=row.get("meta") or {}))
    if not out:
        raise ValueError(f"{path} has no records")
    return out


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj if isinstance(obj, (str, int, float, bool)) or obj is None else str(obj)


__all__ = ["VARIANTS", "CONCEPTS", "REFUSALS", "concepts_for", "reasoning_step", "parse_reasoning", "refusal",
           "refactor", "plain_sft", "write_jsonl", "read_jsonl"]
