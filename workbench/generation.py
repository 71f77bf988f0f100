"""Greedy decoding that skips work HF ``generate`` does, with the same tokens.

:func:`greedy_decode` takes a *right*-padded batch and

* runs the batch's **shared prefix** (the chat template's system turn) once at batch 1 and
  broadcasts its key/value cache (:mod:`workbench._forward`);
* applies the unembedding only to the position it reads (the last one of each row);
* **drops finished rows**: a row that emitted an end-of-turn token leaves the batch (and its cache
  rows go), so a long answer no longer keeps 31 finished ones computing;
* gives each row its own position ids, so right padding left between a prompt and its answer
  is masked out and changes nothing (the same positions as HF's left-padded generation).

Hooks installed with ``Workbench.hooks`` fire on every call, as with HF ``generate`` (prefill
positions, then one new position per step). ``tests/test_generation.py`` checks the tokens equal
HF ``generate``'s at fp32.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ._forward import MIN_SHARED_PREFIX, decoder_and_head, shared_prefix_length


def eos_token_ids(model: nn.Module, tokenizer) -> list[int]:
    """The token ids that end a generation: the model's generation config's, else the tokenizer's."""
    cfg = getattr(model, "generation_config", None)
    ids = getattr(cfg, "eos_token_id", None) if cfg is not None else None
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return []
    return [int(i) for i in ids] if isinstance(ids, Iterable) else [int(ids)]


@torch.no_grad()
def greedy_decode(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                  eos_ids: list[int], share_prefix: bool = True) -> list[list[int]]:
    """Greedy continuation of each row of a right-padded batch.

    Args:
        model: a HF causal LM (or peft model) whose decoder accepts ``position_ids`` and a cache.
        input_ids, attention_mask: ``[batch, pos]``, right-padded.
        max_new_tokens: most new tokens per row.
        eos_ids: tokens that end a row (kept as its last token, as HF does).

    Returns: per row, the new token ids (ending with an ``eos_ids`` token if one was produced).
    """
    from transformers import DynamicCache

    if max_new_tokens < 1:
        return [[] for _ in range(input_ids.shape[0])]
    decoder, head = decoder_and_head(model)
    b, t = input_ids.shape
    device = input_ids.device
    lengths = attention_mask.sum(1)
    if bool((lengths == 0).any()):
        raise ValueError("a row of the batch has no tokens")
    p = min(shared_prefix_length(input_ids, attention_mask), int(lengths.min()) - 1) if share_prefix and b > 1 else 0
    cache = DynamicCache()
    if p >= MIN_SHARED_PREFIX:
        decoder(input_ids=input_ids[:1, :p], use_cache=True, past_key_values=cache)
        for layer in cache.layers:
            layer.keys = layer.keys.expand(b, *layer.keys.shape[1:])
            layer.values = layer.values.expand(b, *layer.values.shape[1:])
        out = decoder(input_ids=input_ids[:, p:], attention_mask=attention_mask, past_key_values=cache,
                      use_cache=True, cache_position=torch.arange(p, t, device=device))
        last = out.last_hidden_state[torch.arange(b, device=device), lengths - 1 - p]
    else:
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
        last = out.last_hidden_state[torch.arange(b, device=device), lengths - 1]
    logits = head(last)
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    mask = attention_mask.clone()
    pos = lengths.clone()          # the next token's position id, per row
    alive = torch.arange(b)        # original row of each row still decoding
    new: list[list[int]] = [[] for _ in range(b)]
    for step in range(max_new_tokens):
        tok = logits.argmax(-1)
        for i, k in zip(alive.tolist(), tok.tolist()):
            new[i].append(k)
        if step == max_new_tokens - 1:
            break
        done = torch.isin(tok, eos)
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            alive, tok, mask, pos = alive[keep.cpu()], tok[keep], mask[keep], pos[keep]
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[keep], layer.values[keep]
        mask = torch.cat([mask, mask.new_ones(len(tok), 1)], 1)
        out = decoder(input_ids=tok[:, None], attention_mask=mask, position_ids=pos[:, None], past_key_values=cache,
                      use_cache=True, cache_position=torch.tensor([mask.shape[1] - 1], device=device))
        pos = pos + 1
        logits = head(out.last_hidden_state[:, -1])
    return new
