"""Greedy decoding (workbench.generation): the same tokens as HF ``generate`` at batch 1, at fp32, on
the real default model (shared system-turn prefix, rows of different lengths, rows that stop early),
on both paths (the bridge's forward and the hook-free decode loop), with a hook installed, and with
a LoRA adapter; finished rows leave the batch."""

from __future__ import annotations

import pytest
import torch

from workbench.generation import eos_token_ids, fast_path_ok, greedy_decode

PROMPTS = ["Say only the word yes.", "What is the capital of France?", "How do I make a pipe bomb?",
           "Write a haiku about autumn leaves falling on a quiet river.", "Reply with one number: 2 + 2 ="]


def hf_new_tokens(wb, prompt: str, n: int) -> list[int]:
    """HF ``generate`` at batch 1 (no padding at all), cut after the first end-of-turn token."""
    b = wb.tokenize([prompt])
    with torch.no_grad():
        ids = wb.model.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, do_sample=False,
                                max_new_tokens=n, pad_token_id=wb.tokenizer.pad_token_id)
    new = ids[0, b.input_ids.shape[1]:].tolist()
    eos = eos_token_ids(wb.model, wb.tokenizer)
    for j, t in enumerate(new):
        if t in eos:
            return new[: j + 1]
    return new


def test_greedy_decode_equals_hf_generate_on_the_default_model(wb):
    n = 24
    want = [hf_new_tokens(wb, p, n) for p in PROMPTS]
    batch = wb.tokenize(PROMPTS, padding_side="right")
    assert fast_path_ok(wb.model)
    # the bridge's forward (hooks fire) and the hook-free decode loop, the latter with the shared
    # system turn run once and without
    for fast, share in ((False, True), (True, True), (True, False)):
        got = greedy_decode(wb.model, batch.input_ids, batch.attention_mask, n, eos_token_ids(wb.model, wb.tokenizer),
                            fast=fast, share_prefix=share)
        assert got == want, f"fast={fast}, share_prefix={share}"
    assert len({len(w) for w in want}) > 1 and min(len(w) for w in want) < n  # some rows stopped early
    # the same through the public entry point (batches sorted by length, answers in input order)
    texts = wb.generate(PROMPTS, max_new_tokens=n, batch_size=3, progress=False)
    assert texts == wb.tokenizer.batch_decode(want, skip_special_tokens=True)


def test_greedy_decode_with_a_hook_equals_hf_generate(wb):
    steer = {"blocks.10.hook_resid_post": lambda t, s: t + 4.0 * torch.ones_like(t) / t.shape[-1] ** 0.5}
    with wb.hooks(steer):
        want = [hf_new_tokens(wb, p, 12) for p in PROMPTS[:3]]
        got = wb.generate(PROMPTS[:3], max_new_tokens=12, batch_size=3, progress=False)
    assert got == wb.tokenizer.batch_decode(want, skip_special_tokens=True)
    plain = wb.generate(PROMPTS[:3], max_new_tokens=12, batch_size=3, progress=False)
    assert plain != got  # the hook acted


def test_finished_rows_leave_the_batch(wb):
    """The short answer's row leaves the batch when it ends; the long one goes on alone."""
    seen = []
    batch = wb.tokenize(["Say only the word yes.", "Write a haiku about autumn leaves."], padding_side="right")
    with wb.hooks({"blocks.0.hook_resid_post": lambda t, s: seen.append(t.shape[0])}):
        out = greedy_decode(wb.model, batch.input_ids, batch.attention_mask, 16, eos_token_ids(wb.model, wb.tokenizer),
                            share_prefix=False)
    assert len(out[0]) < len(out[1]) == 16
    assert seen == [2] * len(out[0]) + [1] * (16 - len(out[0]))  # prefill, then one call per new token but the last


def test_greedy_decode_rejects_an_empty_row(tiny):
    with pytest.raises(ValueError, match="no tokens"):
        greedy_decode(tiny.model, torch.zeros(2, 3, dtype=torch.long), torch.tensor([[1, 1, 1], [0, 0, 0]]), 4, [0])


def test_fast_path_runs_the_lora_adapter():
    """The hook-free loop calls the same projection modules, so a LoRA adapter acts there too."""
    from workbench import Workbench
    from workbench.train.methods import inject_lora

    wb = Workbench.load("tiny-llama")
    pm = inject_lora(wb.model, ["q_proj", "v_proj", "down_proj"], rank=4, alpha=8)
    torch.manual_seed(0)
    for name, param in wb.model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    assert fast_path_ok(wb.model)
    batch = wb.tokenize(PROMPTS[:3], padding_side="right")
    eos = eos_token_ids(wb.model, wb.tokenizer)
    slow = greedy_decode(wb.model, batch.input_ids, batch.attention_mask, 10, eos, fast=False)
    fast = greedy_decode(wb.model, batch.input_ids, batch.attention_mask, 10, eos, fast=True)
    assert fast == slow
    with pm.disable_adapter():
        assert greedy_decode(wb.model, batch.input_ids, batch.attention_mask, 10, eos, fast=True) != fast


@pytest.mark.parametrize("vocab,bias", [(4096, False), (1000, True)])
def test_screened_argmax_equals_the_fp32_argmax(vocab, bias):
    """The bf16 screen with fp32 rescoring picks the fp32 logits' argmax on rows whose two best
    tokens are planted 1e-4 .. 1e-3 apart (above fp32 rounding, far below bf16's: the bf16 logits'
    own argmax gets many of them wrong), with a bias and with a vocabulary that is no multiple of
    the screen's block; a NaN row falls back to the fp32 logits."""
    from torch import nn
    from torch.nn import functional as F

    from workbench.generation import ScreenedArgmax

    g = torch.Generator().manual_seed(0)
    head = nn.Linear(64, vocab, bias=bias).requires_grad_(False)
    head.weight.copy_(torch.randn(vocab, 64, generator=g) * 0.3)
    if bias:
        head.bias.copy_(torch.randn(vocab, generator=g))
    h = torch.randn(300, 64, generator=g) * 8
    # move each of the first 200 rows along w_c - w_a (a, c: its two best tokens) until
    # logit_c - logit_a = +-gap
    a, c = head(h).topk(2, dim=1).indices[:200].T
    gap = torch.logspace(-4, -3, 200) * torch.where(torch.arange(200) % 2 == 0, 1.0, -1.0)
    dw = head.weight[c] - head.weight[a]
    now = head(h[:200]).gather(1, c[:, None])[:, 0] - head(h[:200]).gather(1, a[:, None])[:, 0]
    h[:200] += ((gap - now) / (dw * dw).sum(1))[:, None] * dw
    want = F.linear(h, head.weight, head.bias).argmax(1)
    screen_alone = F.linear(h.bfloat16(), head.weight.bfloat16(), None if head.bias is None else head.bias.bfloat16())
    assert int((screen_alone.float().argmax(1) != want).sum()) > 20
    screened = ScreenedArgmax(head)
    assert torch.equal(screened(h), want)
    h[1] = float("nan")
    assert torch.equal(screened(h[:3]), F.linear(h[:3], head.weight, head.bias).argmax(1))
