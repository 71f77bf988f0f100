from workbench.data import load_dataset
from workbench.evals import build_suites
from workbench.evals.suites import _last_number, wilson


def test_suites_are_deterministic_and_held_out():
    a, b = build_suites("quick", seed=0), build_suites("quick", seed=0)
    assert {k: [r.id for r in v.records] for k, v in a.items()} == {k: [r.id for r in v.records] for k, v in b.items()}
    c = build_suites("quick", seed=1)
    assert [r.id for r in a["id_harmful"].records] != [r.id for r in c["id_harmful"].records]
    train_ids = {r.id for src in ("advbench", "harmbench", "benign_instructions") for r in load_dataset(src, split="train")}
    for name in ("id_harmful", "benign"):
        assert not {r.id for r in a[name].records} & train_ids
    for name in ("ood_template", "ood_gcg", "ood_encoding"):
        assert a[name].records and not {r.meta["request_id"] for r in a[name].records} & train_ids
        assert not {r.meta["request_id"] for r in a[name].records} & {r.id for r in a["id_harmful"].records}


def test_every_full_suite_prompt_fits_the_context():
    from workbench.models import load_tokenizer

    tok = load_tokenizer()
    longest = max(len(tok(r.prompt + (r.response if suite.kind == "perplexity" else ""))["input_ids"])
                  for suite in build_suites("full").values() for r in suite.records)  # what each suite feeds
    assert longest < 1024, longest


def test_wilson_and_answer_extraction():
    lo, hi = wilson(5, 10)
    assert 0.23 < lo < 0.24 and 0.76 < hi < 0.77  # the textbook 95% Wilson interval for 5/10
    assert _last_number("so the total is 1,250 dollars.") == "1250"
    assert _last_number("no digits") is None
