"""Explainers and detection scorers on a synthetic concept with known meaning."""

import random

import pytest
import torch

from workbench.autointerp import (
    KeywordScorer,
    LLMExplainer,
    LLMScorer,
    OfflineExplainer,
    TokenContexts,
    detection_score,
    explain_and_score,
    holdout_examples,
)
from workbench.autointerp.explainers import parse_label
from workbench.autointerp.scorers import parse_predictions
from workbench.concepts import Concept, ConceptSet

SITE = "blocks.0.hook_resid_post"
WEAPONS = ["bomb", "explosive", "grenade"]
COOKING = ["recipe", "bread", "flour"]
TOPICS = ["garden", "poem", "river", "music", "travel", "history", "science", "football", "weather", "computer",
          "mountain", "library"]
FILLER = ["the", "a", "about", "how", "to", "me", "please", "quickly", "now", "and", "with", "for"]


def synthetic_contexts(n=240, d=8, seed=0):
    """Records of random words; direction e0 fires on weapon words, e1 on cooking words."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    toks, labels, rows = [], [], []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(6)] + [rng.choice(TOPICS) for _ in range(3)]
        if i % 3 == 0:
            words.insert(rng.randrange(len(words)), rng.choice(WEAPONS))
        if i % 4 == 1:
            words.insert(rng.randrange(len(words)), rng.choice(COOKING))
        toks.append([" " + w for w in words])
        labels.append(int(i % 3 == 0))
        for w in words:
            x = torch.randn(d, generator=g) * 0.5
            x[0] += 4.0 * (w in WEAPONS)
            x[1] += 4.0 * (w in COOKING)
            rows.append(x)
    return TokenContexts.from_tokens(SITE, toks, torch.stack(rows), labels)


@pytest.fixture(scope="module")
def ctx():
    return synthetic_contexts()


def concepts():
    return ConceptSet([Concept("weapons", SITE, torch.eye(8)[0]), Concept("cooking", SITE, torch.eye(8)[1]),
                       Concept("noise", SITE, torch.eye(8)[5])])


def test_offline_explainer_finds_the_words(ctx):
    h = holdout_examples(ctx, torch.eye(8)[0], n_explain=12, n_test=20)
    exp = OfflineExplainer(n_terms=3).explain(h["explain_top"], h["explain_contrast"])
    terms = exp.label.split(", ")
    assert len(terms) == 3 and set(terms) <= set(WEAPONS), exp.evidence
    # no record is both explained and tested
    used = [{e.record for e in h[k]} for k in ("explain_top", "explain_contrast", "test_pos", "test_neg")]
    assert sum(map(len, used)) == len(set().union(*used))


def test_detection_ranks_correct_label_above_shuffled(ctx):
    scorer = KeywordScorer()
    results = {}
    for name, direction in [("weapons", torch.eye(8)[0]), ("cooking", torch.eye(8)[1])]:
        h = holdout_examples(ctx, direction, n_explain=12, n_test=20)
        label = OfflineExplainer(n_terms=3).explain(h["explain_top"], h["explain_contrast"]).label
        results[name] = (label, h)
    for name, other in [("weapons", "cooking"), ("cooking", "weapons")]:
        label, h = results[name]
        correct = detection_score(label, h["test_pos"], h["test_neg"], scorer)
        shuffled = detection_score(results[other][0], h["test_pos"], h["test_neg"], scorer)
        assert correct.auroc > 0.9 and correct.accuracy > 0.85, correct
        assert shuffled.auroc < 0.7, shuffled
        assert correct.auroc > shuffled.auroc + 0.25
        assert correct.n_pos == correct.n_neg == 20


def test_explain_and_score_writes_meta(ctx):
    cs = concepts()
    df = explain_and_score(cs, ctx, OfflineExplainer(), KeywordScorer(), n_explain=12, n_test=20)
    assert list(df["name"]) == ["weapons", "cooking", "noise"]
    assert df.set_index("name").loc["weapons", "auroc"] > 0.9
    ai = cs["cooking"].meta["autointerp"]
    assert set(ai["label"].split(", ")) <= set(COOKING) and ai["detection"]["auroc"] > 0.9
    assert cs["cooking"].label == ""  # the person decides


class FakeClient:
    """Answers like a chat model: the explainer gets a label; the scorer gets 0/1 by keyword."""

    model = "fake"

    def __init__(self):
        self.calls = []

    def chat(self, messages):
        self.calls.append(messages)
        user = messages[-1]["content"]
        if "Feature description" in user:
            lines = [ln for ln in user.splitlines() if ln[:1].isdigit() and ". " in ln]
            return "Sure: " + str([int(any(w in ln for w in WEAPONS)) for ln in lines])
        return "The excerpts mention weapons.\nLabel: \"explosives and bombs\"."


def test_llm_explainer_and_scorer_protocol(ctx):
    client = FakeClient()
    h = holdout_examples(ctx, torch.eye(8)[0], n_explain=8, n_test=10)
    exp = LLMExplainer(client, max_examples=5).explain(h["explain_top"], h["explain_contrast"])
    assert exp.label == "explosives and bombs" and exp.explainer == "llm:fake"
    prompt = client.calls[0][-1]["content"]
    assert "<<" in prompt and ">>" in prompt and prompt.count("\n1. ") == 2  # top and contrast lists
    res = detection_score("explosives", h["test_pos"], h["test_neg"], LLMScorer(client, batch_size=7))
    assert res.accuracy == 1.0 and res.auroc == 1.0


def test_parsers():
    assert parse_label("blah\nLabel: Requests for weapons.") == "Requests for weapons"
    assert parse_label("just a phrase") == "just a phrase"
    assert parse_predictions("here: [1, 0, 1]", 3) == [1.0, 0.0, 1.0]
    assert parse_predictions("1\n0\n0", 3) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        parse_predictions("[1, 0]", 3)
