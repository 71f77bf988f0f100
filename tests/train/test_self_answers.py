"""Self-distilled benign answers (``benign_answers: self``): generated once, judged, stored, reused."""

from __future__ import annotations

import json

import pytest

from workbench.data import Record, load_dataset
from workbench.evals import default_judge
from workbench.train import Recipe, RecipeError
from workbench.train import self_answers as sa
from workbench.train.data import build_records

HARM = Record(id="h/1", prompt="Explain how to pick a lock to break into a house", label=1, source="h")


def test_complete_sentences_cuts_after_the_last_sentence():
    assert sa.complete_sentences("Hello there. This is cut") == "Hello there."
    assert sa.complete_sentences("A list:\n1. one\n2. tw") == "A list:\n1. one"  # "2." is a number, not an end
    assert sa.complete_sentences("It ended!") == "It ended!"
    assert sa.complete_sentences('He said "hi." Then') == 'He said "hi."'
    assert sa.complete_sentences("no sentence end at all") == "no sentence end at all"
    assert sa.complete_sentences("  ") == ""


def test_self_answers_are_the_models_greedy_answers_judged_and_stored(wb, tmp_path, monkeypatch):
    benign = [r for r in load_dataset("benign_instructions", split="train")
              if len(wb.tokenizer(r.prompt)["input_ids"]) < 256][:4]
    bare = Record(id="b/none", prompt="Name three primary colours.", label=0, source="b")  # no reference
    long = Record(id="b/long", prompt="Summarise: " + "word " * 300, label=0, source="b", response="A summary.")
    records = [HARM, *benign, bare, long]
    path = tmp_path / sa.FILE
    out = sa.with_self_answers(wb, records, path, max_new_tokens=24, progress=False)

    prompts = [r.prompt for r in [*benign, bare]]
    expected = [sa.complete_sentences(t) for t in wb.generate(prompts, max_new_tokens=24, batch_size=2,
                                                                progress=False)]
    refused = default_judge()(prompts, expected)
    assert out[0] is HARM and out[-1] is long  # harmful records and prompts training would cut pass unchanged
    kept = {r.id: r for r in out[1:-1]}
    for rec, answer, no in zip([*benign, bare], expected, refused):
        if not no:
            assert kept[rec.id].response == answer and kept[rec.id].meta["answer_source"] == "self"
        elif rec.response:
            assert kept[rec.id].response == rec.response and kept[rec.id].meta["answer_source"] == "reference"
        else:
            assert rec.id not in kept
    assert sum(r.meta["answer_source"] == "self" for r in kept.values()) >= 3  # the untouched model complies

    # stored: a second call generates nothing and gives the same records
    monkeypatch.setattr(wb, "generate", lambda *a, **k: pytest.fail("generated again"))
    assert sa.with_self_answers(wb, records, path, max_new_tokens=24, progress=False) == out
    monkeypatch.undo()
    # a corrupted file is detected, not silently regenerated
    path.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="corrupt"):
        sa.with_self_answers(wb, records, path, max_new_tokens=24, progress=False)
    path.write_text(json.dumps({"format": sa.FORMAT, "model": wb.model_id, "max_new_tokens": 24})[:-3])
    with pytest.raises(ValueError, match="corrupt"):
        sa.with_self_answers(wb, records, path, max_new_tokens=24, progress=False)


def test_recipe_key_checks_and_needs_the_model(tmp_path):
    with pytest.raises(RecipeError, match="benign_answers"):
        Recipe.from_dict({"output_dir": "x", "dataset": "advbench", "benign_answers": "own"})
    recipe = Recipe.from_dict({"output_dir": str(tmp_path), "dataset": "benign_instructions", "max_samples": 2,
                               "benign_answers": "self"})
    with pytest.raises(ValueError, match="needs the model"):
        build_records(recipe)


def test_a_recipe_reads_and_writes_its_answers_at_self_answers_path(wb, tmp_path, monkeypatch):
    shared = tmp_path / "shared" / "answers.json"
    recipe = Recipe.from_dict({"output_dir": str(tmp_path / "run"), "dataset": "benign_instructions", "max_samples": 2,
                               "benign_answers": "self", "self_answers_path": str(shared), "seed": 1,
                               "model_name_or_path": wb.model_id})
    first = build_records(recipe, wb)
    assert shared.is_file() and not (tmp_path / "run" / sa.FILE).exists()
    # another run (its own folder) with the same path generates nothing and trains on the same answers
    monkeypatch.setattr(wb, "generate", lambda *a, **k: pytest.fail("generated again"))
    assert build_records(recipe.replace(output_dir=str(tmp_path / "other")), wb) == first
