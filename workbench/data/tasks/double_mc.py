"""Double multiple choice (CAFT, Casademunt et al. 2025): two questions in one prompt.

Each option holds one answer to each question. In ``train`` (and ``id_test``) the correct answers
of both questions sit in the same option, so either question alone answers the prompt; in
``ood_test`` they are split, and the *intended* question decides. A model that learned the
*spurious* question picks the other option. The question types need no world knowledge and
this model can learn each alone (``workbench.experiments.caft`` checks it before pairing):

* ``agreement``: subject-verb agreement (``The dogs near the door ___ loud.`` -> are / is);
* ``pronoun``: pronoun case (``Yesterday ___ went to the shop.`` -> she / her);
* ``sentiment``: sentiment of a short review (positive / negative);
* ``compare``: which of two numbers is larger (a knowledge-free type in place of the paper's
  sports trivia, which a 135M model does not know).

Items are built from seeded word lists; the words of ``train`` and of the test splits are
disjoint where the type has a lexicon (nouns, verbs, adjectives, numbers), so no item is shared.
"""

from __future__ import annotations

import random

from ..registry import Record

PROMPT = "Question: {qa} | {qb}\nA. {a1}, {b1}\nB. {a2}, {b2}\nAnswer:"
SPLITS = ("train", "id_test", "ood_test")

_NOUNS = ["dog", "cat", "teacher", "child", "bird", "farmer", "singer", "student", "horse", "baker",
          "player", "driver", "painter", "doctor", "writer", "lawyer", "sailor", "pilot", "neighbour",
          "friend", "girl", "boy", "nurse", "cook", "guard", "clerk", "dancer", "king", "queen", "tiger"]
_PLACES = ["near the door", "in the garden", "by the river", "at the school", "on the hill",
           "behind the house", "in the kitchen", "at the station", "next to the car", "in the park"]
_ADJ = [("loud", "quiet"), ("happy", "tired"), ("hungry", "busy"), ("ready", "late"), ("kind", "calm")]
_POS = ["loved", "enjoyed", "adored", "was delighted by", "was thrilled with", "praised", "recommend",
        "had a wonderful time at", "was impressed by", "will happily return to"]
_NEG = ["hated", "disliked", "was bored by", "regret", "was disappointed by", "complained about",
        "would never return to", "was annoyed by", "had an awful time at", "was upset by"]
_THINGS = ["the film", "the concert", "the meal", "the hotel", "the book", "the show", "the game",
           "the trip", "the museum", "the café", "the class", "the party"]
_SUBJ_FRAMES = ["Yesterday ___ went to the shop.", "I think ___ is right.", "Later ___ will call.",
                "After lunch ___ fell asleep.", "Last night ___ sang a song.", "Today ___ feels fine.",
                "In the morning ___ runs.", "On Sunday ___ cooked dinner.", "Maybe ___ knows the way.",
                "At noon ___ left the office.", "Suddenly ___ laughed.", "Every day ___ reads."]
_OBJ_FRAMES = ["We saw ___ at the shop.", "I told ___ the truth.", "Please call ___ later.",
               "They thanked ___ warmly.", "The dog followed ___ home.", "Nobody helped ___ today.",
               "The teacher asked ___ a question.", "We met ___ in town.", "I gave ___ a book.",
               "Everyone likes ___ a lot.", "The boss paid ___ on time.", "She waved at ___."]
_CASE = {"subject": {"male": "he", "female": "she"}, "object": {"male": "him", "female": "her"}}


def _half(items: list, split: str, seed: str) -> list:
    """The train part (80%) or the test part (20%) of a seeded shuffle of ``items``."""
    items = list(items)
    random.Random(seed).shuffle(items)
    k = max(1, round(0.2 * len(items)))
    return items[k:] if split == "train" else items[:k]


def _agreement(rng: random.Random, split: str) -> tuple[str, str, str, str]:
    noun = rng.choice(_half(_NOUNS, split, "agree-nouns"))
    place = rng.choice(_PLACES)
    adj = rng.choice(rng.choice(_ADJ))
    plural = rng.random() < 0.5
    subj = noun + ("s" if plural else "")
    return f"The {subj} {place} ___ {adj}.", ("are" if plural else "is"), ("is" if plural else "are"), \
        ("plural" if plural else "singular")


def _pronoun(rng: random.Random, split: str) -> tuple[str, str, str, str]:
    case = rng.choice(["subject", "object"])
    frame = rng.choice(_half(_SUBJ_FRAMES if case == "subject" else _OBJ_FRAMES, split, f"pron-{case}"))
    gender = rng.choice(["male", "female"])
    other = "object" if case == "subject" else "subject"
    return frame, _CASE[case][gender], _CASE[other][gender], case


def _sentiment(rng: random.Random, split: str) -> tuple[str, str, str, str]:
    positive = rng.random() < 0.5
    verb = rng.choice(_half(_POS if positive else _NEG, split, f"senti-{positive}"))
    thing = rng.choice(_THINGS)
    who = rng.choice(["I", "We", "My sister", "Our group", "My friend"])
    good, bad = ("positive", "negative") if positive else ("negative", "positive")
    return f"Is this review positive or negative? \"{who} {verb} {thing}.\"", good, bad, good


def _compare(rng: random.Random, split: str) -> tuple[str, str, str, str]:
    pool = _half(list(range(2, 100)), split, "compare-numbers")
    x, y = rng.sample(pool, 2)
    return f"Which is larger, {x} or {y}?", str(max(x, y)), str(min(x, y)), ("first" if x > y else "second")


QUESTION_TYPES = {"agreement": _agreement, "pronoun": _pronoun, "sentiment": _sentiment, "compare": _compare}


def single_task(qtype: str, split: str = "train", n: int = 200, seed: int = 0) -> list[Record]:
    """One question type alone, as ``Question: {q}\\nA. {x}\\nB. {y}\\nAnswer:`` (its learnability check)."""
    gen = _gen(qtype)
    rng = random.Random(f"single-{qtype}-{split}-{seed}")
    out = []
    for i in range(n):
        q, good, bad, _ = gen(rng, "train" if split == "train" else "test")
        first = rng.random() < 0.5
        x, y = (good, bad) if first else (bad, good)
        letter = "A" if first else "B"
        out.append(Record(id=f"{qtype}/{split}/{seed}/{i}", prompt=f"Question: {q}\nA. {x}\nB. {y}\nAnswer:",
                          label=None, source=f"single_{qtype}", category=qtype, response=letter,
                          meta=dict(correct_letter=letter, spurious_letter=letter)))
    return out


def _gen(qtype: str):
    if qtype not in QUESTION_TYPES:
        raise ValueError(f"unknown question type {qtype!r}; choose from {sorted(QUESTION_TYPES)}")
    return QUESTION_TYPES[qtype]


def double_mc(intended: str, spurious: str, split: str = "train", n: int = 400, seed: int = 0) -> list[Record]:
    """Records of the double multiple-choice task for the pair (``intended``, ``spurious``).

    The intended question comes first in half the prompts. ``meta``: ``correct_letter`` (by the
    intended question), ``spurious_letter`` (by the spurious one; equal in train / id_test, the
    other letter in ood_test), ``intended`` / ``spurious`` (the types), ``intended_value`` /
    ``spurious_value`` (a two-valued attribute of each question, e.g. plural / singular, positive /
    negative: what a probe of each concept separates)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if intended == spurious:
        raise ValueError("the intended and the spurious question types must differ")
    gi, gs = _gen(intended), _gen(spurious)
    part = "train" if split == "train" else "test"
    rng = random.Random(f"dmc-{intended}-{spurious}-{split}-{seed}")
    out = []
    for i in range(n):
        qi, gi_good, gi_bad, value_i = gi(rng, part)
        qs, gs_good, gs_bad, value_s = gs(rng, part)
        first = rng.random() < 0.5          # the intended answer in option A?
        agree = split != "ood_test"
        opt_i = (gi_good, gi_bad) if first else (gi_bad, gi_good)
        opt_s = (gs_good, gs_bad) if first == agree else (gs_bad, gs_good)
        intended_first = rng.random() < 0.5
        if intended_first:
            qa, qb, (a1, a2), (b1, b2) = qi, qs, opt_i, opt_s
        else:
            qa, qb, (a1, a2), (b1, b2) = qs, qi, opt_s, opt_i
        letter = "A" if first else "B"
        spur = letter if agree else ("B" if first else "A")
        prompt = PROMPT.format(qa=qa, qb=qb, a1=a1, b1=b1, a2=a2, b2=b2)
        out.append(Record(id=f"dmc/{intended}-{spurious}/{split}/{seed}/{i}", prompt=prompt, label=None,
                          source="double_mc", category=f"{intended}-{spurious}", response=letter,
                          meta=dict(correct_letter=letter, spurious_letter=spur, intended=intended,
                                    spurious=spurious, intended_first=intended_first,
                                    intended_value=value_i, spurious_value=value_s)))
    return out
