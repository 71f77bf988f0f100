"""The shared-prefix forward and the response-only loss against the plain HF forward."""

from __future__ import annotations

import torch

from workbench._forward import hidden_states, shared_prefix_length
from workbench.data.tasks import gender_task
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
    prompts = [r.prompt for r in gender_task("ood_test", n=5)]
    ref = wb.forward(prompts)[:, -1]
    assert (wb.next_token_logits(prompts, batch_size=3) - ref).abs().max() < 1e-3
