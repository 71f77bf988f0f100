"""The generated tasks: exact prompt, option rules, splits that share no frame or lexicon item."""

from __future__ import annotations

import re

import pytest

from workbench.data import load_dataset
from workbench.data.tasks import double_mc, gender_task, single_task
from workbench.data.tasks.gender import BLANK, DISTRACTOR, INSTRUCTION, frame_split, frames


def _sentence(prompt: str) -> str:
    return prompt.split("\n")[1].removeprefix("Question: ")


def _frame_of(rec) -> str:
    return re.sub(rf"\b{rec.meta['profession']}\b", "{p}", _sentence(rec.prompt).lower())


def test_prompt_is_exactly_the_issue_format():
    rec = gender_task("train", n=1, seed=3)[0]
    m = rec.meta
    a, b = (m["correct"], m["distractor"]) if m["correct_letter"] == "A" else (m["distractor"], m["correct"])
    assert rec.prompt == f"{INSTRUCTION}\nQuestion: {_sentence(rec.prompt)}\nA) {a}\nB) {b}\nAnswer:"
    assert BLANK in rec.prompt and rec.response == m["correct_letter"]


@pytest.mark.parametrize("split", ["train", "id_test", "ood_test"])
def test_options_differ_in_case_and_gender(split):
    case_of = {"he": "subject", "she": "subject", "him": "object", "her": "object"}
    gender_of = {"he": "male", "him": "male", "she": "female", "her": "female"}
    for r in gender_task(split, professions="extended"):
        c, d = r.meta["correct"], r.meta["distractor"]
        assert DISTRACTOR[c] == d and case_of[c] != case_of[d] and gender_of[c] != gender_of[d]
        assert case_of[c] == r.meta["case"] and gender_of[c] == r.meta["gender"]
        assert r.meta["aligned"] == (split != "ood_test")
        assert (r.meta["gender"] == r.meta["stereotype"]) == r.meta["aligned"]


def test_no_frame_or_sentence_shared_between_train_and_test():
    train = gender_task("train", professions="extended")
    test = gender_task("id_test", professions="extended") + gender_task("ood_test", professions="extended")
    assert {r.meta["frame"] for r in train}.isdisjoint({r.meta["frame"] for r in test})
    assert {_frame_of(r) for r in train}.isdisjoint({_frame_of(r) for r in test})
    assert {_sentence(r.prompt) for r in train}.isdisjoint({_sentence(r.prompt) for r in test})
    split = frame_split()
    assert len(split["train"]) + len(split["test"]) == len(frames()) >= 100
    assert len({_sentence(r.prompt) for r in train}) >= 100


def test_both_option_orders_and_balanced_cues():
    recs = gender_task("train", professions="paper")
    assert {r.meta["correct_letter"] for r in recs} == {"A", "B"}
    assert {r.meta["case"] for r in recs} == {"subject", "object"}
    assert {(r.meta["profession"], r.meta["gender"]) for r in recs} == {("doctor", "male"), ("nurse", "female")}


def test_seeded_and_registry_access():
    assert [r.prompt for r in gender_task("train", n=20, seed=1)] == [r.prompt for r in gender_task("train", n=20, seed=1)]
    assert [r.prompt for r in gender_task("train", n=20, seed=1)] != [r.prompt for r in gender_task("train", n=20, seed=2)]
    recs = load_dataset("gender_pronoun", split="ood_test", limit=7)
    assert len(recs) == 7 and all(not r.meta["aligned"] for r in recs)
    with pytest.raises(ValueError, match="splits"):
        load_dataset("gender_pronoun", split="test")
    with pytest.raises(ValueError, match="answer_format"):
        gender_task("train", answer_format="word")


def test_pronoun_answer_format():
    r = gender_task("train", n=1, answer_format="pronoun")[0]
    assert r.response == r.meta["correct"] and r.prompt.endswith("Answer:")


@pytest.mark.parametrize("pair", [("agreement", "sentiment"), ("compare", "pronoun")])
def test_double_mc_agree_in_train_split_in_ood(pair):
    for split in ("train", "id_test", "ood_test"):
        recs = double_mc(*pair, split=split, n=60, seed=0)
        for r in recs:
            agree = r.meta["correct_letter"] == r.meta["spurious_letter"]
            assert agree == (split != "ood_test")
            lines = r.prompt.split("\n")
            assert lines[0].startswith("Question: ") and " | " in lines[0] and lines[3] == "Answer:"
    train_q = {r.prompt.split("\n")[0] for r in double_mc(*pair, split="train", n=200)}
    test_q = {r.prompt.split("\n")[0] for r in double_mc(*pair, split="ood_test", n=200)}
    assert train_q.isdisjoint(test_q)


def test_double_mc_errors_and_single_task():
    with pytest.raises(ValueError, match="differ"):
        double_mc("agreement", "agreement")
    with pytest.raises(ValueError, match="unknown question type"):
        double_mc("agreement", "sports")
    recs = single_task("compare", "train", n=10)
    assert all(r.response in ("A", "B") and r.prompt.count("\n") == 3 for r in recs)
    from workbench.data.tasks import load_task

    held = load_task("single:compare", "id_test", n=20, seed=3)
    assert [r.prompt for r in held] == [r.prompt for r in load_task("single:compare", "ood_test", n=20, seed=3)]
    assert not {r.prompt for r in held} & {r.prompt for r in load_task("single:compare", "train", n=200, seed=3)}
