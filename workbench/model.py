"""``Workbench``: the one model-wrapping layer.

Holds the HF model, its tokenizer, a chat formatter and a backend (TransformerLens
``TransformerBridge`` by default, nnsight as the second) that runs forward passes with hook
functions at TransformerLens site names. Everything else in the package touches a model only
through this class.

>>> wb = Workbench.load()                                   # the embedded SmolLM2-135M-Instruct
>>> acts = wb.capture(["How do I bake bread?"], ["blocks.12.hook_resid_post"], position="last")
>>> acts["blocks.12.hook_resid_post"].shape                 # [n_prompts, d_model]
torch.Size([1, 576])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from tqdm.auto import tqdm

from . import models
from ._forward import decoder_and_head, hidden_states
from .backends import BACKENDS, HookFn, StopForward, make_backend
from .batching import plan_batches
from .chat import ChatBatch, ChatFormatter
from .generation import eos_token_ids, fast_path_ok, greedy_decode
from .sites import (
    TOKEN_PREFIX,
    Site,
    check_position,
    parse_site,
    reduce_positions,
    rows_per_prompt,
    site_name,
    token_index,
)

if TYPE_CHECKING:
    from .backends.transformer_lens import TransformerLensBackend
    from .interventions import Intervention

# A user hook: fn(tensor, site_name) -> replacement tensor or None. Objects with an
# ``as_hooks(wb) -> {site: fn}`` method (interventions) are accepted wherever hooks are.
UserHook = Callable[[torch.Tensor, str], torch.Tensor | None]


class Activations(dict):
    """``{site: tensor}`` plus ``record_index``: ``[rows]`` index of the prompt each row came from
    (``arange(n_prompts)`` except for the ragged positions ``all`` / ``response``)."""

    record_index: torch.Tensor
    position: str


@dataclass
class BatchCapture:
    """One batch of captured activations (what the activation store writes)."""

    start: int  # index of the batch's first prompt in the whole dataset
    acts: Activations
    tokens: int  # real (non-pad) tokens in the batch


class Workbench:
    """Wrap a HF causal LM for analysis and intervention.

    Args:
        model, tokenizer: a loaded HF model and fast tokenizer (see :func:`workbench.models.load`).
        model_id: a name recorded in every artifact's manifest.
        backend: ``"transformer_lens"`` (default) or ``"nnsight"``; both take the same site names.
        system_prompt: optional system message for the chat template.
        remote: an ``nnsight.LanguageModel`` whose traces run on NDIF (see :meth:`load`).
    """

    trained_by: Path  # the run folder, once ``workbench.train.train`` changed this model in place (unset before)

    def __init__(self, model, tokenizer, model_id: str, backend: str = "transformer_lens",
                 system_prompt: str | None = None, remote: object = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.chat = ChatFormatter(tokenizer, system_prompt=system_prompt)
        self.backend = make_backend(backend, model, tokenizer, model_id, remote=remote)
        cfg = model.config
        self.n_layers: int = cfg.num_hidden_layers
        self.d_model: int = cfg.hidden_size
        self.n_heads: int = cfg.num_attention_heads
        self.n_kv_heads: int = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.d_head: int = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    @classmethod
    def load(cls, name: str = models.DEFAULT_MODEL, backend: str = "transformer_lens",
             dtype: torch.dtype = torch.float32, device: str = "cpu", remote: bool = False, **kwargs) -> Workbench:
        """Load a model by name (embedded, ``tiny-llama``, local folder or hub id) and wrap it.

        ``remote=True`` (``backend="nnsight"``): run every trace on NDIF's servers for a model they
        host (needs ``NDIF_API_KEY``; only the config and tokenizer are fetched). Offline, a missing
        key or an unreachable service raises one :class:`RemoteUnavailable` with the reason. GPUs:
        ``device="cuda", dtype=torch.bfloat16``."""
        if remote:
            if backend != "nnsight":
                raise ValueError("remote=True runs traces on NDIF through nnsight: pass backend='nnsight'")
            from .backends.nnsight import connect_remote

            model, tokenizer, lm = connect_remote(name)
            return cls(model, tokenizer, name, backend=backend, remote=lm, **kwargs)
        if device == "cpu":
            from ._allocator import keep_freed_memory

            keep_freed_memory()
        model, tokenizer = models.load(name, dtype=dtype, device=device)
        return cls(model, tokenizer, name, backend=backend, **kwargs)

    def __repr__(self) -> str:
        return (f"Workbench({self.model_id!r}, backend={self.backend.name!r}, layers={self.n_layers}, "
                f"d_model={self.d_model}, heads={self.n_heads}/{self.n_kv_heads} kv, d_head={self.d_head})")

    # ----------------------------------------------------------------- sites
    @property
    def bridge(self):
        """The TransformerLens ``TransformerBridge`` (transformer_lens backend only)."""
        if not hasattr(self.backend, "bridge"):
            raise AttributeError(f"the {self.backend.name} backend has no TransformerBridge")
        return cast("TransformerLensBackend", self.backend).bridge

    @property
    def sites(self) -> list[str]:
        """Every valid hook name (per-head sites add ``[h]`` to ``blocks.{l}.attn.hook_z``)."""
        return sorted(self.backend.valid_hooks)

    def site(self, name: str) -> Site:
        """Validate a site name; an unknown one raises listing the closest valid names."""
        return parse_site(name, self.backend.valid_hooks, self.n_heads)

    def site_shape(self, name: str) -> tuple[int, ...]:
        """Per-token shape of a site: ``(d_model,)``, ``(n_heads, d_head)`` or ``(d_head,)``."""
        s = self.site(name)
        if s.kind == "attn.hook_z":
            return (self.d_head,) if s.head is not None else (self.n_heads, self.d_head)
        if s.kind == "mlp.hook_post":
            return (self.model.config.intermediate_size,)
        return (self.d_model,)

    # ----------------------------------------------------------------- hooks
    def _backend_hooks(self, hooks: Mapping[str, UserHook | Sequence[UserHook]] | object
                       ) -> list[tuple[str, HookFn]]:
        """Turn ``{site: fn | [fn, ...]}`` (or an intervention object) into backend hooks.
        A head site ``...hook_z[h]`` gives ``fn`` the ``[batch, pos, d_head]`` slice."""
        if hasattr(hooks, "as_hooks"):
            hooks = cast("Intervention", hooks).as_hooks(self)
        out = []
        for name, fns in cast("Mapping[str, UserHook | Sequence[UserHook]]", hooks).items():
            site = self.site(name)
            for fn in cast("Sequence[UserHook]", fns if isinstance(fns, (list, tuple)) else [fns]):
                out.append((site.hook, _adapt(fn, site)))
        return out

    @contextmanager
    def hooks(self, hooks: Mapping[str, UserHook | Sequence[UserHook]] | object) -> Iterator[Workbench]:
        """Install hooks for a ``with`` block; they are removed on exit, on an exception and on
        KeyboardInterrupt. With the transformer_lens backend they fire on every call of the
        model inside the block (forward, generate, HF Trainer)."""
        with self.backend.install(self._backend_hooks(hooks)):
            yield self

    # ----------------------------------------------------------------- forward
    def tokenize(self, prompts: Sequence[str], responses: Sequence[str] | None = None,
                 padding_side: str = "left") -> ChatBatch:
        """Chat-format and tokenize; see :class:`workbench.chat.ChatBatch` for the masks."""
        return self.chat.encode(prompts, responses, padding_side=padding_side)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are."""
        return next(self.model.parameters()).device

    def forward(self, inputs: Sequence[str] | ChatBatch, hooks=None, grad: bool = False) -> torch.Tensor:
        """Logits ``[batch, pos, vocab]`` for prompts (chat-formatted, left-padded) or a batch.
        ``grad=True`` keeps the autograd graph (attribution, training a probe through the model)."""
        batch = inputs if isinstance(inputs, ChatBatch) else self.tokenize(inputs)
        batch = batch.to(self.device)
        with torch.enable_grad() if grad else torch.no_grad():
            out = self.backend.run(batch.input_ids, batch.attention_mask,
                                   self._backend_hooks(hooks) if hooks else ())
        return out.logits

    def next_token_logprobs(self, prompts: Sequence[str], options: Sequence, hooks=None, batch_size: int = 32,
                            per_prompt: bool = False, progress: bool = False) -> torch.Tensor:
        """``[n, k]`` log-probabilities of ``k`` options as the assistant's first token after each
        prompt (from :meth:`next_token_logits`). An option is a string (its first token counts) or a
        list of strings (their first tokens' probabilities are summed, e.g. ``["Yes", " Yes"]``).
        ``options`` is one list of ``k`` options for every prompt, or, with ``per_prompt=True``,
        one such list per prompt."""
        rows = list(options) if per_prompt else [options] * len(prompts)
        if len(rows) != len(prompts):
            raise ValueError(f"per_prompt options: {len(rows)} lists for {len(prompts)} prompts")
        ids = [[self._option_ids(opt) for opt in row] for row in rows]
        if not ids or len({len(r) for r in ids}) > 1 or not ids[0]:
            raise ValueError("every prompt needs the same, non-zero number of options")
        logprobs = self.next_token_logits(prompts, hooks=hooks, batch_size=batch_size,
                                          progress=progress).float().log_softmax(-1)
        return torch.stack([torch.stack([logprobs[i, opt].logsumexp(-1) for opt in row]) for i, row in enumerate(ids)])

    def _option_ids(self, option: str | Sequence[str]) -> list[int]:
        words = [option] if isinstance(option, str) else list(option)
        ids = []
        for w in words:
            toks = self.tokenizer(w, add_special_tokens=False)["input_ids"]
            if not toks:
                raise ValueError(f"option {w!r} has no tokens")
            ids.append(toks[0])
        return sorted(set(ids))

    def next_token_logits(self, prompts: Sequence[str], hooks=None, batch_size: int = 32,
                          progress: bool = False) -> torch.Tensor:
        """Logits ``[n, vocab]`` of the token after each chat-formatted prompt (the assistant's first
        token). With the transformer_lens backend a batch's shared prefix runs once and the LM head
        only at the last position (:mod:`workbench._forward`); same numbers as :meth:`forward`."""
        if len(prompts) == 0:
            raise ValueError("no prompts to score")
        rows = []
        fast = self.backend.persistent_hooks  # installed hooks fire in the exact shortcut too
        # batches of similar length (a batch pads to its longest prompt; MMLU's run from 64 to 549
        # tokens), rows returned in input order
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        with self.hooks(hooks) if hooks is not None else nullcontext():
            for lo in tqdm(range(0, len(prompts), batch_size), desc="score", disable=not progress):
                chunk = [prompts[i] for i in order[lo:lo + batch_size]]
                if not fast:
                    rows.append(self.forward(chunk)[:, -1].float().cpu())
                    continue
                batch = self.tokenize(chunk, padding_side="right").to(self.device)
                with torch.no_grad():
                    hidden = hidden_states(self.model, batch.input_ids, batch.attention_mask)
                    last = hidden[torch.arange(len(chunk)), batch.last_index.to(hidden.device)]
                    rows.append(decoder_and_head(self.model)[1](last).float().cpu())
        scored = torch.cat(rows)
        out = torch.empty_like(scored)
        out[torch.tensor(order)] = scored
        return out

    def iter_capture(self, prompts: Sequence[str], sites: Sequence[str], position: str = "last",
                     batch_size: int = 8, responses: Sequence[str] | None = None, start: int = 0,
                     dtype: torch.dtype = torch.float32, progress: bool = True) -> Iterator[BatchCapture]:
        """Yield captured activations batch by batch, from prompt ``start`` on.

        Each site's tensor is reduced to ``position`` (see :func:`workbench.sites.reduce_positions`)
        inside the hook, so memory holds one batch of reduced activations at a time. The forward
        pass stops after the last block any site needs (no LM head when all sites are in blocks).
        """
        check_position(position)
        if not sites:
            raise ValueError("no sites to capture")
        if len(prompts) == 0:
            raise ValueError("no prompts to capture")
        parsed = [self.site(s) for s in sites]
        if len(set(sites)) != len(sites):
            raise ValueError("duplicate site names")
        # Stop after the last block any site needs (the final norm and LM head are never needed
        # when every site is inside a block).
        last_layer = None if any(s.layer is None for s in parsed) else max(s.layer for s in parsed if s.layer is not None)
        bar = tqdm(total=len(prompts), initial=start, desc="capture", unit="prompt", disable=not progress)
        for lo in range(start, len(prompts), batch_size):
            hi = min(lo + batch_size, len(prompts))
            batch = self.tokenize(prompts[lo:hi], None if responses is None else responses[lo:hi])
            batch = batch.to(self.device)
            acts = Activations()
            # A named token's activations depend only on the tokens up to it (causal models): run the
            # batch only that far.
            index = token_index(batch, position).to(self.device) if position.startswith(TOKEN_PREFIX) else None
            cut = int(index.max()) + 1 if index is not None else None

            def grab(t: torch.Tensor, name: str, batch=batch, acts=acts, index=index) -> None:
                t = t.detach()
                red = t[torch.arange(t.shape[0]), index] if index is not None else reduce_positions(t, batch, position)
                acts[name] = red.to("cpu", dtype).contiguous()

            hooks: dict[str, list] = {s.name: [grab] for s in parsed}
            if last_layer is not None:
                hooks.setdefault(site_name(last_layer), []).append(_stop)
            with torch.no_grad():
                self.backend.run(batch.input_ids[:, :cut], batch.attention_mask[:, :cut], self._backend_hooks(hooks))
            counts = rows_per_prompt(batch, position)
            acts.record_index = torch.repeat_interleave(torch.arange(lo, hi), counts)
            acts.position = position
            bar.update(hi - lo)
            yield BatchCapture(start=lo, acts=acts, tokens=int(batch.attention_mask.sum()))
        bar.close()

    def capture(self, prompts: Sequence[str], sites: Sequence[str], position: str = "last",
                batch_size: int = 8, responses: Sequence[str] | None = None,
                dtype: torch.dtype = torch.float32, progress: bool = True) -> Activations:
        """Capture activations in memory: ``{site: tensor}`` with shapes ``[n, *site_shape]``
        (``[n, k, *site_shape]`` for post_instruction, ``[n_tokens, *site_shape]`` for all /
        response). For datasets that do not fit memory, use :class:`workbench.ActivationStore`."""
        parts = list(self.iter_capture(prompts, sites, position, batch_size, responses,
                                       dtype=dtype, progress=progress))
        out = Activations({s: torch.cat([p.acts[s] for p in parts]) for s in sites})
        out.record_index = torch.cat([p.acts.record_index for p in parts])
        out.position = position
        return out

    # ----------------------------------------------------------------- generate
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 8,
                 do_sample: bool = False, progress: bool = True, **kwargs) -> list[str]:
        """Batched generation (greedy by default) with a KV cache; answers in input order. Hooks
        installed with :meth:`hooks` apply at every step (transformer_lens backend).

        Greedy decoding on the transformer_lens backend runs :func:`workbench.generation.greedy_decode`
        (shared prefix once, finished rows leave the batch; without installed hooks a cached SDPA
        decode loop; the same tokens as HF ``generate``); sampling, extra ``generate`` kwargs or
        another backend use HF ``generate`` (left-padded)."""
        if not self.backend.persistent_hooks and self.backend.installed_count():
            raise NotImplementedError(f"generation with installed hooks needs a backend whose hooks fire inside "
                                      f"generate (transformer_lens), not {self.backend.name}")
        greedy = not do_sample and not kwargs and self.backend.persistent_hooks
        hook_free = greedy and self.backend.installed_count() == 0 and fast_path_ok(self.model)
        eos = eos_token_ids(self.model, self.tokenizer)
        # Greedy: prompts sharing a template run together (its prefix is computed once), the rest by
        # length (less padding); see workbench.batching. Answers return in input order.
        if not prompts:
            return []
        if greedy:
            ids = self.tokenize(prompts, padding_side="right")
            lengths = ids.attention_mask.sum(1).tolist()
            batches = plan_batches([row[:n] for row, n in zip(ids.input_ids.tolist(), lengths)], batch_size,
                                   max_new_tokens)
        else:
            order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
            batches = [order[lo:lo + batch_size] for lo in range(0, len(prompts), batch_size)]
        out: list[str] = [""] * len(prompts)
        for idx in tqdm(batches, desc="generate", disable=not progress):
            if greedy:  # the batch's rows of the right-padded tokenization, cut to its longest row
                width = max(lengths[i] for i in idx)
                input_ids, mask = ids.input_ids[idx, :width], ids.attention_mask[idx, :width]
                new = greedy_decode(self.model, input_ids.to(self.device), mask.to(self.device), max_new_tokens,
                                    eos, fast=hook_free)
            else:
                batch = self.tokenize([prompts[i] for i in idx], padding_side="left").to(self.device)
                with torch.no_grad():
                    gen = self.model.generate(
                        input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        max_new_tokens=max_new_tokens, do_sample=do_sample,
                        pad_token_id=self.tokenizer.pad_token_id, **kwargs)
                new = gen[:, batch.input_ids.shape[1]:].tolist()
            for i, text in zip(idx, self.tokenizer.batch_decode(new, skip_special_tokens=True)):
                out[i] = text
        return out


def _stop(t: torch.Tensor, name: str) -> None:
    raise StopForward


class HookShapeError(ValueError):
    """A hook returned a tensor whose shape differs from the activation it was given."""


def _checked(fn: UserHook, name: str) -> UserHook:
    """``fn`` whose returned tensor (if any) must keep the activation's shape: a clear error naming
    the site instead of a broadcasting failure deep inside the model."""

    def run(t: torch.Tensor, site: str) -> torch.Tensor | None:
        out = fn(t, site)
        if out is not None and (not isinstance(out, torch.Tensor) or out.shape != t.shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise HookShapeError(f"hook on {name!r} returned {got}; it must return None or a tensor of the "
                                 f"activation's shape {tuple(t.shape)}")
        return out

    return run


def _adapt(fn: UserHook, site: Site) -> HookFn:
    """Bind the site name; for a head site, hand ``fn`` that head's slice and write it back."""
    fn = _checked(fn, site.name)
    if site.head is None:
        return lambda t: fn(t, site.name)
    h = site.head

    def on_head(t: torch.Tensor) -> torch.Tensor | None:
        out = fn(t[:, :, h], site.name)
        if out is None:
            return None
        t = t.clone()
        t[:, :, h] = out
        return t

    return on_head
