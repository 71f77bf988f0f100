"""The shared-prefix forward and the response-only loss against the plain HF forward."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from workbench._forward import hidden_states, pack, packed_hidden_states, shared_prefix_length
from workbench.data import load_dataset
from workbench.data.tasks import gender_task
from workbench.train import coca
from workbench.train import data as sft_data
from workbench.train.loss import response_loss


def test_shared_prefix_length():
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 5, 4], [1, 2, 3, 9]])
    assert shared_prefix_length(ids) == 2
    assert shared_prefix_length(ids[:1]) == 4
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert shared_prefix_length(ids[[0, 0, 0]], mask) == 3


def _batch(wb, n=6):
    recs = gender_task("train", n=n, seed=0)
    return sft_data.Collator(wb.tokenizer.pad_token_id)(sft_data.encode(wb, recs, 256))


def test_hidden_states_and_loss_match_hf(tiny):
    b = _batch(tiny)
    assert shared_prefix_length(b["input_ids"], b["attention_mask"]) >= 8
    model = tiny.model
    with torch.no_grad():
        ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
        fast = hidden_states(model, b["input_ids"], b["attention_mask"])
        real = b["attention_mask"].bool()
        # hidden_states[-1] is after the final norm in HF's Llama
        assert (fast[real] - ref.hidden_states[-1][real]).abs().max() < 1e-4
        plain = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        assert abs(float(response_loss(model, b["input_ids"], b["attention_mask"], b["labels"])) - float(plain)) < 1e-5


def test_gradients_through_the_shared_prefix_match(tiny):
    b = _batch(tiny, 4)
    model = tiny.model
    params = [p for p in model.parameters()][:6] + [model.lm_head.weight]
    model.zero_grad()
    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss.backward()
    ref = [p.grad.clone() for p in params]
    model.zero_grad()
    response_loss(model, b["input_ids"], b["attention_mask"], b["labels"]).backward()
    for r, p in zip(ref, params):
        assert torch.allclose(r, p.grad, atol=1e-5, rtol=1e-3)
    model.zero_grad()


def test_next_token_logits_equal_forward(wb):
    # longest first: scored in batches of similar length (shortest first), returned in this order
    prompts = sorted((r.prompt for r in gender_task("ood_test", n=5)), key=len, reverse=True)
    assert len({len(p) for p in prompts}) > 1
    ref = wb.forward(prompts)[:, -1]
    assert (wb.next_token_logits(prompts, batch_size=3) - ref).abs().max() < 1e-3


def test_answer_weights_mark_the_answer_opening_and_weight_the_loss(tiny):
    recs = coca.refactor(load_dataset("harmbench", split="train", limit=2)
                         + load_dataset("benign_instructions", split="train", limit=2), "think")
    examples = sft_data.encode(tiny, recs, 256, answer_weight=3.0, answer_tokens=4)
    for r, e in zip(recs, examples):
        w, labelled = e["loss_weights"], e["labels"] != sft_data.IGNORE_INDEX
        assert ((w > 0) == labelled).all() and int((w == 3.0).sum()) == 4
        opening = tiny.tokenizer.decode(e["input_ids"][w == 3.0])
        answer = r.response[coca.answer_start(r.response):]
        assert answer.startswith(opening) and opening.strip() == opening and opening, (opening, answer)
    b = sft_data.Collator(tiny.tokenizer.pad_token_id)(examples)
    assert b["loss_weights"].shape == b["labels"].shape
    # closed form from the plain HF forward: sum of weighted per-token cross-entropies / labelled tokens
    with torch.no_grad():
        logits = tiny.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        targets, w = b["labels"][:, 1:], b["loss_weights"][:, 1:]
        sel = targets != sft_data.IGNORE_INDEX
        ref = (F.cross_entropy(logits[sel], targets[sel], reduction="none") * w[sel]).sum() / sel.sum()
        got = response_loss(tiny.model, b["input_ids"], b["attention_mask"], b["labels"], weights=b["loss_weights"])
        plain = response_loss(tiny.model, b["input_ids"], b["attention_mask"], b["labels"])
    assert abs(float(got) - float(ref)) < 1e-5 and float(got) > float(plain)
    assert "loss_weights" not in sft_data.encode(tiny, recs[:1], 256)[0]  # the default path is unchanged


# ------------------------------------------------------------------ padding-free packing
def _uneven_batch(wb):
    """Harmful -> refusal and benign -> answer examples of different lengths (padding in every batch)."""
    recs = coca.plain_sft(load_dataset("harmbench", split="train", limit=2)
                          + load_dataset("benign_instructions", split="train", limit=2))
    examples = sft_data.encode(wb, recs, 96)
    assert len({len(e["input_ids"]) for e in examples}) > 1
    return sft_data.Collator(wb.tokenizer.pad_token_id)(examples)


def test_pack_lays_rows_end_to_end_and_masks_across_rows():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0], [1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13]])
    mask = (ids != 0).long()
    mask[1, -1] = 1
    packed, pos, attend, packing = pack(ids, mask)
    assert packing.prefix == 8 and packing.segments == ((8, 2), (10, 3))
    assert packed.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert pos.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 8, 9, 10]]
    a = attend[0, 0]
    assert a[10, :8].all() and not a[10, 8:10].any() and a[10, 10] and not a[10, 11:].any()
    assert packing.index[0].tolist() == list(range(10)) + [-1]
    with pytest.raises(ValueError, match="right-padded"):
        pack(ids, torch.tensor([[0] + [1] * 10, [1] * 11]))


@pytest.mark.parametrize("share_prefix", [True, False])
def test_packed_hidden_states_loss_and_gradients_match_hf(tiny, share_prefix):
    b = _uneven_batch(tiny)
    model = tiny.model
    real = b["attention_mask"].bool()
    with torch.no_grad():
        ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
        packed, packing = packed_hidden_states(model, b["input_ids"], b["attention_mask"], share_prefix=share_prefix)
    assert packed.shape[1] == int(real.sum()) - (len(real) - 1) * packing.prefix  # no padded position computed
    assert (share_prefix and packing.prefix >= 8) or (not share_prefix and packing.prefix == 0)
    assert (packed[0, packing.index[real]] - ref.hidden_states[-1][real]).abs().max() < 1e-4
    params = [p for p in model.parameters()][:6] + [model.lm_head.weight]
    model.zero_grad()
    plain = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
    plain.backward()
    grads = [p.grad.clone() for p in params]
    model.zero_grad()
    loss = response_loss(model, b["input_ids"], b["attention_mask"], b["labels"], share_prefix=share_prefix, pack=True)
    loss.backward()
    assert abs(float(loss.detach()) - float(plain.detach())) < 1e-5
    for g, p in zip(grads, params):
        assert torch.allclose(g, p.grad, atol=1e-5, rtol=1e-3)
    model.zero_grad()


def test_packed_loss_equals_padded_loss_on_the_default_model(wb):
    b = _uneven_batch(wb)
    with torch.no_grad():
        padded = response_loss(wb.model, b["input_ids"], b["attention_mask"], b["labels"])
        packed = response_loss(wb.model, b["input_ids"], b["attention_mask"], b["labels"], pack=True)
    assert abs(float(packed) - float(padded)) < 1e-4 * float(padded)
