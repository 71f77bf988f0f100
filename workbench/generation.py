"""Greedy decoding that skips work HF ``generate`` does, with the same tokens.

:func:`greedy_decode` takes a *right*-padded batch and

* runs the batch's **shared prefix** (the chat template's system turn) once at batch 1 and
  broadcasts its key/value cache (:mod:`workbench._forward`);
* applies the unembedding only to the position it reads (the last one of each row);
* **drops finished rows**: a row that emitted an end-of-turn token leaves the batch (and its cache
  rows go), so a long answer no longer keeps 31 finished ones computing;
* gives each row its own position ids, so right padding left between a prompt and its answer
  is masked out and changes nothing (the same positions as HF's left-padded generation).

Two paths, the same tokens (``tests/test_generation.py`` checks both against HF ``generate`` at
fp32):

* with hooks installed (``Workbench.hooks``): the wrapped model's own forward, so every hook fires
  at every call (prefill positions, then one new position per step), as with HF ``generate``;
* without hooks installed through ``Workbench.hooks`` (hooks added to the bridge's hook points
  by hand are not seen), on a TransformerLens-bridged Llama-family model (:func:`fast_path_ok`): a decode
  loop over the same modules (norms, projections -- LoRA included -- and MLPs) with a
  preallocated key/value cache and grouped-query SDPA attention (at a decode step, each
  key/value head's query heads as its query rows: no key/value copy per group), and, where bf16
  GEMMs are fast, the next token from :class:`ScreenedArgmax` (a bf16 screen of the unembedding,
  its candidates re-scored in fp32). The bridge's attention re-implements attention eagerly for
  its score / pattern hooks and copies every key/value head group at each step; skipping that is
  most of the gain.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from ._forward import decoder_and_head, prefill_shared, prefix_to_share
from ._hardware import fast_bf16

if TYPE_CHECKING:
    from transformers.cache_utils import DynamicLayer

FAST_MODEL_TYPES = ("llama", "mistral", "qwen2")
# the hook-free loop's unembedding argmax through ScreenedArgmax (bf16 screen, fp32 rescoring: the
# same tokens) where bf16 GEMMs are fast; False = the plain fp32 logits (bench/generate.py times both)
SCREEN_UNEMBEDDING = True


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
                  eos_ids: list[int], share_prefix: bool = True, fast: bool = False) -> list[list[int]]:
    """Greedy continuation of each row of a right-padded batch.

    Args:
        model: a HF causal LM (or peft model) whose decoder accepts ``position_ids`` and a cache.
        input_ids, attention_mask: ``[batch, pos]``, right-padded.
        max_new_tokens: most new tokens per row.
        eos_ids: tokens that end a row (kept as its last token, as HF does).
        fast: the hook-free decode loop (:func:`fast_path_ok` must hold and no hook be installed:
            the caller checks).

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
    p = prefix_to_share(input_ids, attention_mask, share_prefix)  # 0: no shared prefix to run once
    if fast:
        return _FastDecoder(decoder, head, b, t + max_new_tokens).run(input_ids, attention_mask, lengths, p,
                                                                       max_new_tokens, eos_ids)
    if p:
        _, rest, cache = prefill_shared(decoder, input_ids, attention_mask, p)
        last = rest[torch.arange(b, device=device), lengths - 1 - p]
    else:
        cache = DynamicCache()
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
                kv = cast("DynamicLayer", layer)  # an attention layer's cache, filled by the prefill
                assert kv.keys is not None and kv.values is not None
                kv.keys, kv.values = kv.keys[keep], kv.values[keep]
        mask = torch.cat([mask, mask.new_ones(len(tok), 1)], 1)
        out = decoder(input_ids=tok[:, None], attention_mask=mask, position_ids=pos[:, None], past_key_values=cache,
                      use_cache=True, cache_position=torch.tensor([mask.shape[1] - 1], device=device))
        pos = pos + 1
        logits = head(out.last_hidden_state[:, -1])
    return new


def fast_path_ok(model: nn.Module) -> bool:
    """Whether :class:`_FastDecoder` reproduces this model: a TransformerLens-bridged decoder of a
    plain Llama-family architecture (RoPE, grouped-query attention, no q/k norms, no sliding
    window, no softcapping)."""
    try:
        decoder, _ = decoder_and_head(model)
        cfg = decoder.config
        layer = cast(nn.ModuleList, decoder.layers)[0]
        attn = layer.attn
    except (AttributeError, IndexError, TypeError):
        return False
    if getattr(cfg, "model_type", None) not in FAST_MODEL_TYPES or getattr(cfg, "sliding_window", None):
        return False
    hf_attn = getattr(attn, "original_component", None)
    return (hf_attn is not None and all(hasattr(attn, n) for n in ("q", "k", "v", "o"))
            and "q_norm" not in getattr(attn, "submodules", {}) and getattr(hf_attn, "attn_logit_softcapping", None) is None
            and all(hasattr(layer, n) for n in ("ln1", "ln2", "mlp")) and hasattr(decoder, "rotary_emb"))


class _FastDecoder:
    """Greedy decoding over the bridged model's modules with a preallocated cache ``[B, kv_heads,
    max_len, d_head]`` per layer and SDPA attention; rows that finish are compacted away once a
    quarter of the batch has finished (fewer cache copies than at every finish)."""

    def __init__(self, decoder: nn.Module, head: nn.Module, batch: int, max_len: int):
        # the bridge's submodules are looked up by name (nn.Module's stubs type them as Tensor | Module)
        self.decoder: Any = decoder
        self.head = head
        self.layers: list[Any] = list(self.decoder.layers)
        # the bridge's modules wrap the HF ones (hook points in and out, unused without hooks): call
        # the wrapped modules themselves, ~6% of a decode step at batch 64 (bench/generate.py)
        self.mods = [{n: _unwrapped(getattr(layer, n)) for n in ("ln1", "ln2", "mlp")}
                     | {n: _unwrapped(getattr(layer.attn, n)) for n in ("q", "k", "v", "o")} for layer in self.layers]
        self.norm = _unwrapped(self.decoder.norm)
        hf_attn = self.layers[0].attn.original_component
        self.d_head, self.scale = hf_attn.head_dim, hf_attn.scaling
        self.n_kv = n_kv = self.decoder.config.num_key_value_heads
        unembed = _unwrapped(head)
        screen = SCREEN_UNEMBEDDING and ScreenedArgmax.applies(unembed)
        self.argmax = ScreenedArgmax(unembed) if screen else lambda h: head(h).argmax(-1)
        w = (self.decoder.embed_tokens.weight if hasattr(self.decoder.embed_tokens, "weight")
             else next(self.decoder.parameters()))
        shape = (batch, n_kv, max_len, self.d_head)
        self.k = [w.new_zeros(shape) for _ in self.layers]
        self.v = [w.new_zeros(shape) for _ in self.layers]

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, start: int, mask: torch.Tensor) -> torch.Tensor:
        """Hidden states after the final norm ``[B, T, d]`` of tokens ``ids`` ``[B, T]`` at cache
        slots ``start..start+T`` (RoPE positions ``positions`` ``[B, T]``); ``mask`` ``[B, 1, T, start+T]``
        bool (True = attend)."""
        b, t = ids.shape
        x = self.decoder.embed_tokens(ids)
        cos, sin = self.decoder.rotary_emb(x, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        end = start + t
        for i, m in enumerate(self.mods):
            h = m["ln1"](x)
            q = m["q"](h).view(b, t, -1, self.d_head).transpose(1, 2)
            k = m["k"](h).view(b, t, -1, self.d_head).transpose(1, 2)
            v = m["v"](h).view(b, t, -1, self.d_head).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            self.k[i][:b, :, start:end] = k
            self.v[i][:b, :, start:end] = v
            if t == 1:  # decode: each key/value head's query heads as its query rows (no KV copy per group)
                o = F.scaled_dot_product_attention(q.reshape(b, self.n_kv, -1, self.d_head), self.k[i][:b, :, :end],
                                                   self.v[i][:b, :, :end], attn_mask=mask, scale=self.scale)
                x = x + m["o"](o.reshape(b, 1, -1))
            else:
                o = F.scaled_dot_product_attention(q, self.k[i][:b, :, :end], self.v[i][:b, :, :end], attn_mask=mask,
                                                   scale=self.scale, enable_gqa=True)
                x = x + m["o"](o.transpose(1, 2).reshape(b, t, -1))
            x = x + m["mlp"](m["ln2"](x))
        return self.norm(x)

    def run(self, input_ids, attention_mask, lengths, p: int, max_new_tokens: int, eos_ids) -> list[list[int]]:
        b, t = input_ids.shape
        device = input_ids.device
        keymask = attention_mask.bool()
        causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
        pos = torch.arange(t, device=device).expand(b, t)
        if p:  # the shared prefix (prefix_to_share) once, its cache copied to every row
            self.forward(input_ids[:1, :p], pos[:1, :p], 0, causal[None, None, :p, :p])
            for cache in (*self.k, *self.v):
                cache[1:b, :, :p] = cache[:1, :, :p]
        mask = (causal[p:] & keymask[:, None, :])[:, None]  # [B, 1, T - p, T]
        hidden = self.forward(input_ids[:, p:], pos[:, p:], p, mask)
        tok = self.argmax(hidden[torch.arange(b, device=device), lengths - 1 - p])
        eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
        keys = torch.cat([keymask, keymask.new_zeros(b, max_new_tokens)], 1)  # [B, max_len] slots that hold a token
        nxt = lengths.clone()                     # each row's next RoPE position
        alive = torch.arange(b)                   # original row of each cache row
        live = torch.ones(b, dtype=torch.bool, device=device)
        new: list[list[int]] = [[] for _ in range(b)]
        slot = t
        for step in range(max_new_tokens):
            for i, k, on in zip(alive.tolist(), tok.tolist(), live.tolist()):
                if on:
                    new[i].append(k)
            live = live & ~torch.isin(tok, eos)
            if step == max_new_tokens - 1 or not bool(live.any()):
                break
            if int(live.sum()) <= 3 * len(alive) // 4:  # compact: drop the finished rows and their cache
                keep = live.nonzero().squeeze(1)
                n = len(keep)
                for cache in (*self.k, *self.v):
                    cache[:n] = cache[keep]
                alive, tok, keys, nxt, live = alive[keep.cpu()], tok[keep], keys[keep], nxt[keep], live[keep]
            keys[:, slot] = True
            hidden = self.forward(tok[:, None], nxt[:, None], slot, keys[:, None, None, :slot + 1])
            tok = self.argmax(hidden[:, -1])
            nxt, slot = nxt + 1, slot + 1
        return new


class ScreenedArgmax:
    """``argmax(h @ W.T + b)`` of an fp32 unembedding ``W [vocab, d]`` (bias ``b`` optional) from a
    bf16 screen (one bf16 GEMM, several times faster than fp32 on AMX) and an fp32 rescoring of the
    few tokens that can still be the maximum: the fp32 logits' argmax, up to fp32 summation order.

    Why it is exact: bf16 rounds each operand by a relative 2^-9 and the fp32-accumulated product
    by 2^-9 again, so ``|p16_v - h.W_v| <= c ||h|| ||W_v|| + 2^-8 |p16_v|`` (Cauchy-Schwarz) with
    c ~ 2^-8; :attr:`C` = 2^-7 doubles it. Every token whose screened logit comes within twice that
    bound (with the largest ``||W_v||``) of the row's largest one is rescored in fp32, so the exact
    maximum is among them (ties go to the lowest token id, as ``argmax``). The candidates are found
    through the maxima of blocks of :attr:`BLOCK` logits, so that the one full pass over the
    ``[b, vocab]`` screen is a block max. ``tests/test_generation.py`` checks it against the fp32
    argmax, near-ties included.
    """

    C = 2.0 ** -7
    BLOCK = 64

    @staticmethod
    def applies(head: nn.Module) -> bool:
        """For a plain fp32 ``nn.Linear`` on a CPU whose bf16 GEMMs are fast (AMX)."""
        w = getattr(head, "weight", None)
        return (type(head) is nn.Linear and isinstance(w, torch.Tensor) and w.dtype == torch.float32
                and w.device.type == "cpu" and fast_bf16("cpu"))

    def __init__(self, head: nn.Module):
        self.w = cast(torch.Tensor, head.weight).detach()
        bias = cast("torch.Tensor | None", head.bias)
        self.b = None if bias is None or not bool(bias.any()) else bias.detach()  # the bridge adds a zero bias
        self.w16 = self.w.to(torch.bfloat16)
        self.wmax = float(self.w.norm(dim=1).max())

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """``h [b, d]`` fp32 -> token ids ``[b]``."""
        n, vocab = h.shape[0], self.w.shape[0]
        screen = F.linear(h.to(torch.bfloat16), self.w16)
        if self.b is not None:
            screen = screen.float() + self.b
        if vocab % self.BLOCK:
            screen = F.pad(screen, (0, self.BLOCK - vocab % self.BLOCK), value=float("-inf"))
        blocks = screen.view(n, -1, self.BLOCK)
        block_max = blocks.amax(2)
        top = block_max.amax(1, keepdim=True).float()
        thr = top - 1.01 * (2.0 ** -7 * top.abs() + 2 * self.C * self.wmax * h.norm(dim=1, keepdim=True))  # [n, 1]
        r, blk = (block_max.float() >= thr).nonzero(as_tuple=True)  # blocks holding a candidate
        pr, pc = (blocks[r, blk].float() >= thr[r]).nonzero(as_tuple=True)
        rows, cols = r[pr], blk[pr] * self.BLOCK + pc
        exact = (self.w[cols] * h[rows]).sum(1)  # fp32 logits of the candidates
        if self.b is not None:
            exact = exact + self.b[cols]
        best = exact.new_full((n,), float("-inf")).scatter_reduce(0, rows, exact, "amax")
        win = exact == best[rows]
        out = cols.new_full((n,), vocab).scatter_reduce(0, rows[win], cols[win], "amin")
        lost = (out == vocab).nonzero().squeeze(1)  # no finite candidate (a NaN or inf state): the fp32 row
        if lost.numel():
            out[lost] = F.linear(h[lost], self.w, self.b).argmax(-1)
        return out


def _unwrapped(module: nn.Module) -> nn.Module:
    """The HF module a bridge component wraps (the module itself if it wraps none)."""
    inner = getattr(module, "original_component", None)
    return module if inner is None else inner


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
