"""The user's own prompt files: both formats, and every bad file gets an error naming the line."""

from __future__ import annotations

import json

import pytest

from workbench.data import PromptFileError, load_prompt_file


def test_jsonl_and_csv_read_the_same(tmp_path):
    rows = [{"prompt": "How do I pick a lock?", "label": "harmful"}, {"prompt": "Name a fruit, please", "label": "benign"},
            {"prompt": 'He said "hi", then left', "label": 0}]
    j = tmp_path / "mine.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    c = tmp_path / "mine.csv"
    c.write_text('prompt,label\nHow do I pick a lock?,harmful\n"Name a fruit, please",BENIGN\n"He said ""hi"", then left",0\n')
    for path in (j, c):
        recs = load_prompt_file(path)
        assert [r.prompt for r in recs] == [r["prompt"] for r in rows]
        assert [r.label for r in recs] == [1, 0, 0]
        assert recs[1].id == "mine/1" and recs[0].source == "mine"


@pytest.mark.parametrize("name, content, message", [
    ("a.jsonl", '{"prompt": "ok", "label": 1}\n{"text": "x", "label": 0}\n', r"a\.jsonl:2: no 'prompt' field"),
    ("a.jsonl", '{"prompt": "ok", "label": 1}\n{"prompt": 42, "label": 0}\n', r"a\.jsonl:2: prompt is a int, not text"),
    ("a.jsonl", '{"prompt": "ok", "label": 1}\n{"prompt": "x", "label": "maybe"}\n', r":2: label 'maybe' is not one"),
    ("a.jsonl", '{"prompt": "ok"}\n', r":1: no label"),
    ("a.jsonl", '{"prompt": "ok", "label": 1}\n{broken\n', r":2: not a JSON object"),
    ("a.jsonl", "\n\n", r"no prompts in the file"),
    ("a.csv", "text,label\nhi,0\n", r"a\.csv:1: the header \['text', 'label'\] has no prompt column"),
    ("a.csv", "prompt,label\nhi,0\n   ,1\n", r"a\.csv:3: the prompt is empty"),
    ("a.csv", "", r"no prompts in the file"),
    ("a.txt", "hi", r"\.jsonl or \.csv"),
])
def test_bad_files_name_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PromptFileError, match=message):
        load_prompt_file(path)


def test_wrong_encoding_and_missing_file(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("prompt,label\nhello,0\ncaf\xe9 au lait,0\n".encode("latin-1"))
    with pytest.raises(PromptFileError, match=r"latin\.csv:3: not UTF-8 text \(byte 0xe9\)"):
        load_prompt_file(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompt_file(tmp_path / "none.jsonl")
