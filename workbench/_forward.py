"""Decoder forward passes that skip work whose result is not used, exactly.

* **Shared prefix**: when every row of a right-padded batch starts with the same tokens (the chat
  template's system turn, a task's fixed instruction), that prefix runs once at batch 1 and its
  key/value cache is broadcast to the batch (views, no copies). With gradients on, they flow
  through the shared prefix as through B copies. Hooks fire on both calls, so an intervention on
  every position (CAFT's ablation) still sees every position.
* **Logits only where read**: callers apply the unembedding (a ``[d_model, vocab]`` GEMM, ~20% of
  a 135M model's FLOPs per token) to the positions they need, not to all of them.
* **Packing** (:func:`pack`): a right-padded batch runs as one row of its real tokens, the shared
  prefix once, with a block mask and per-row position ids: no padded position is computed.

``tests/test_forward.py`` compares both with the plain HF forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

MIN_SHARED_PREFIX = 8


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> int:
    """Number of leading positions where every row has the same real token."""
    same = (input_ids == input_ids[:1]).all(0)
    if attention_mask is not None:
        same &= attention_mask.bool().all(0)
    if bool(same.all()):
        return int(same.numel())
    return int(same.int().argmin())


def prefix_to_share(input_ids: torch.Tensor, attention_mask: torch.Tensor, share_prefix: bool = True) -> int:
    """How many leading positions of a right-padded batch to run once for every row: the shared
    prefix, leaving every row at least one token of its own; 0 when shorter than
    :data:`MIN_SHARED_PREFIX`, for a single row, or with ``share_prefix=False``."""
    if not share_prefix or input_ids.shape[0] < 2:
        return 0
    p = min(shared_prefix_length(input_ids, attention_mask), int(attention_mask.sum(1).min()) - 1)
    return p if p >= MIN_SHARED_PREFIX else 0


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The decoder stack (``model.model``) and the unembedding of a HF causal LM or a peft model."""
    get = getattr(model, "get_base_model", None)
    base: Any = get() if get is not None else model  # a PreTrainedModel; nn.Module's stubs do not know its methods
    return base.get_decoder(), base.get_output_embeddings()


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  share_prefix: bool = True) -> torch.Tensor:
    """Final hidden states ``[batch, pos, d_model]`` (after the last norm) of a right-padded batch."""
    decoder, _ = decoder_and_head(model)
    b, t = input_ids.shape
    p = min(shared_prefix_length(input_ids, attention_mask), t - 1) if share_prefix and b > 1 else 0
    if p < MIN_SHARED_PREFIX:
        return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    first, rest, _ = prefill_shared(decoder, input_ids, mask, p)
    return torch.cat([first.expand(b, -1, -1), rest], 1)


def prefill_shared(decoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, p: int):
    """Run the first ``p`` positions (the same in every row) at batch 1, broadcast their key/value
    cache to the batch (views), then run the rest on it. Returns the prefix's hidden states
    ``[1, p, d]``, the rest's ``[batch, pos - p, d]`` and the cache (a ``DynamicCache`` holding every
    position, to decode from)."""
    from transformers import DynamicCache

    b, t = input_ids.shape
    first = decoder(input_ids=input_ids[:1, :p], use_cache=True, past_key_values=DynamicCache())
    cache = first.past_key_values
    for layer in cache.layers:
        layer.keys = layer.keys.expand(b, *layer.keys.shape[1:])
        layer.values = layer.values.expand(b, *layer.values.shape[1:])
    rest = decoder(input_ids=input_ids[:, p:], attention_mask=attention_mask, past_key_values=cache, use_cache=True,
                   cache_position=torch.arange(p, t, device=input_ids.device))
    return first.last_hidden_state, rest.last_hidden_state, cache


# ------------------------------------------------------------------ padding-free packing
@dataclass(frozen=True)
class Packing:
    """Where each row of a right-padded batch sits in one packed row.

    ``prefix``: the shared prefix's length (positions ``[0, prefix)`` of the packed row, run once);
    ``segments``: ``(start, length)`` of each row's remaining real tokens, in row order;
    ``index``: ``[batch, pos]`` the packed position of every real token (``-1`` at padding)."""

    prefix: int
    segments: tuple[tuple[int, int], ...]
    index: torch.Tensor


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
         share_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Packing]:
    """A right-padded batch ``[batch, pos]`` -> one row ``[1, T]`` of its real tokens: the shared
    prefix once, then each row's other tokens (``T`` = prefix + the rows' other real tokens).

    Returns the packed ids ``[1, T]``, their position ids ``[1, T]`` (each row's own positions), the
    attention mask ``[1, 1, T, T]`` (bool, True = attend: each token sees the prefix and its own row's
    earlier tokens, nothing of another row) and the :class:`Packing`."""
    b, t = input_ids.shape
    device = input_ids.device
    mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    lengths = mask.sum(1)
    if not bool((mask == (torch.arange(t, device=device) < lengths[:, None])).all()):
        raise ValueError("pack: the batch must be right-padded (real tokens first in every row)")
    if int(lengths.min()) < 1:
        raise ValueError("pack: a row has no real token")
    p = prefix_to_share(input_ids, mask, share_prefix)
    ids, pos, rows, segments = [input_ids[0, :p]], [torch.arange(p, device=device)], [], []
    rows.append(torch.full((p,), -1, device=device))  # the prefix belongs to every row
    index = torch.full((b, t), -1, dtype=torch.long, device=device)
    index[:, :p] = torch.arange(p, device=device)
    start = p
    for r, n in enumerate(lengths.tolist()):
        ids.append(input_ids[r, p:n])
        pos.append(torch.arange(p, n, device=device))
        rows.append(torch.full((n - p,), r, device=device))
        index[r, p:n] = torch.arange(start, start + n - p, device=device)
        segments.append((start, n - p))
        start += n - p
    row = torch.cat(rows)
    causal = torch.ones(start, start, dtype=torch.bool, device=device).tril()
    attend = causal & ((row[:, None] == row[None, :]) | (row[None, :] == -1))
    return torch.cat(ids)[None], torch.cat(pos)[None], attend[None, None], Packing(p, tuple(segments), index)


def packed_hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         share_prefix: bool = True) -> tuple[torch.Tensor, Packing]:
    """Final hidden states of a right-padded batch computed as one packed row with no padding
    (:func:`pack`): ``[1, T, d_model]`` and the :class:`Packing` (``hidden[0, packing.index[r, j]]``
    is row ``r``'s position ``j``). Equal to :func:`hidden_states` at real positions up to float
    rounding. Hooks see ``[1, T, ...]`` activations, so only position-wise interventions apply."""
    decoder, _ = decoder_and_head(model)
    ids, pos, attend, packing = pack(input_ids, attention_mask, share_prefix)
    out = decoder(input_ids=ids, position_ids=pos, attention_mask=attend, use_cache=False)
    return out.last_hidden_state, packing
