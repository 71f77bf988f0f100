"""Two-option accuracy from next-token logits, against the plain HF forward on the real model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.data.tasks import double_mc, gender_task
from workbench.evals.choice import answer_tokens, choice_margins, choice_metrics, evaluate_choice, option_pairs


def test_option_pairs_per_format():
    rec = gender_task("ood_test", n=1, answer_format="pronoun")[0]
    assert option_pairs([rec]) == ([rec.meta["correct"]], [rec.meta["distractor"]], [rec.meta["distractor"]])
    rec = gender_task("train", n=1)[0]
    c, o, s = option_pairs([rec])
    assert c == [rec.meta["correct_letter"]] and o[0] != c[0] and s == [None]     # aligned: no spurious answer
    ood = double_mc("agreement", "sentiment", "ood_test", n=2)
    assert all(sp is not None and sp != c for c, _, sp in zip(*option_pairs(ood)))


def test_margins_equal_an_independent_hf_forward(wb, hf_model):
    recs = gender_task("ood_test", n=6, answer_format="pronoun", seed=2) + gender_task("id_test", n=6, seed=2)
    margins = choice_margins(wb, recs, batch_size=4)
    tok = wb.tokenizer
    for r, m in zip(recs, margins):
        assert wb.chat.system_prompt is None   # the session model keeps the template's default system turn
        text = tok.apply_chat_template([{"role": "user", "content": r.prompt}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = hf_model(input_ids=ids).logits[0, -1]
        c, o, _ = option_pairs([r])
        cid, oid = answer_tokens(tok, c + o)
        assert abs(float(logits[cid] - logits[oid]) - float(m)) < 1e-3


def test_metrics_and_intervals():
    recs = gender_task("ood_test", n=10, answer_format="pronoun")
    m = choice_metrics(np.array([1.0] * 7 + [-1.0] * 3), recs)
    assert m["accuracy"] == 0.7 and m["flipped"] == pytest.approx(0.3) and m["accuracy_ci"][0] < 0.7 < m["accuracy_ci"][1]
    with pytest.raises(ValueError, match="no records"):
        choice_margins(None, [])


def test_evaluate_choice_with_hooks_leaves_no_hook(tiny):
    recs = {"ood": gender_task("ood_test", n=4, answer_format="pronoun")}
    a = evaluate_choice(tiny, recs)          # the bridge wires its own hooks on the first forward
    before = tiny.backend.hook_count()
    zero = {"blocks.0.hook_resid_post": lambda x, site: x * 0}
    b = evaluate_choice(tiny, recs, hooks=zero)
    assert tiny.backend.hook_count() == before
    assert a["ood"]["margin"] != b["ood"]["margin"]
    assert evaluate_choice(tiny, recs)["ood"]["margin"] == a["ood"]["margin"]
