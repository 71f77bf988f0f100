"""Site names (TransformerLens hook names) and token-position reductions.

A site is a TransformerLens hook name, e.g. ``blocks.12.hook_resid_post`` or
``blocks.12.attn.hook_z``; an attention-head site adds a head index: ``blocks.12.attn.hook_z[3]``.
Shapes per batch: residual-width sites ``[batch, pos, d_model]``, ``attn.hook_z``
``[batch, pos, n_heads, d_head]``, a single head ``[batch, pos, d_head]``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch

from .chat import ChatBatch

HEAD_HOOKS = ("attn.hook_z",)
_SITE = re.compile(r"^blocks\.(\d+)\.([\w.]+?)(?:\[(\d+)\])?$")


class UnknownSite(KeyError):
    """A site name the model does not have; the message lists the closest valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class Site:
    name: str  # as given, head index included
    hook: str  # hook name without head index, e.g. "blocks.3.attn.hook_z"
    layer: int | None
    kind: str  # e.g. "hook_resid_post", "attn.hook_z"
    head: int | None


def parse_site(name: str, valid: set[str], n_heads: int) -> Site:
    """Parse and validate ``name`` against ``valid`` hook names; raise :class:`UnknownSite`."""
    m = _SITE.match(name)
    hook, layer, kind, head = name, None, name, None
    if m:
        layer, kind = int(m.group(1)), m.group(2)
        head = int(m.group(3)) if m.group(3) is not None else None
        hook = f"blocks.{layer}.{kind}"
    if hook not in valid:
        close = difflib.get_close_matches(name, sorted(valid), n=5, cutoff=0.5)
        raise UnknownSite(f"Unknown site {name!r}. Closest valid names: {close or sorted(valid)[:5]}")
    if head is not None:
        if kind not in HEAD_HOOKS:
            raise UnknownSite(f"{name!r}: a head index is only valid on {HEAD_HOOKS}")
        if not 0 <= head < n_heads:
            raise UnknownSite(f"{name!r}: head {head} out of range, the model has {n_heads} heads")
    return Site(name=name, hook=hook, layer=layer, kind=kind, head=head)


POSITIONS = ("last", "mean", "post_instruction", "post_instruction_mean", "all", "response", "response_mean")
RAGGED = ("all", "response")


TOKEN_PREFIX = "token:"


_LAYER_SITE = re.compile(r"^blocks\.(\d+)\.hook_(\w+)$")
_HEAD_SITE = re.compile(r"^blocks\.(\d+)\.attn\.hook_(\w+?)(?:\[(\d+)\])?$")


def split_site(name: str) -> tuple[str, int, int | None]:
    """A site name's parts without a model: ``"blocks.12.hook_resid_post" -> ("resid_post", 12, None)``,
    ``"blocks.12.attn.hook_z[3]" -> ("z", 12, 3)``. Raises ``ValueError`` for other names."""
    m = _HEAD_SITE.match(name)
    if m:
        return m.group(2), int(m.group(1)), None if m.group(3) is None else int(m.group(3))
    m = _LAYER_SITE.match(name)
    if m:
        return m.group(2), int(m.group(1)), None
    raise ValueError(f"cannot parse site {name!r}; expected 'blocks.{{l}}.hook_resid_post' (resid_pre, resid_mid, "
                     "attn_out, mlp_out) or 'blocks.{l}.attn.hook_z[h]'")


def is_head_site(name: str) -> bool:
    """Whether ``name`` is an attention site (``blocks.{l}.attn.hook_*``, with or without ``[h]``)."""
    return _HEAD_SITE.match(name) is not None


def is_position(position: str) -> bool:
    return position in POSITIONS or (position.startswith(TOKEN_PREFIX) and len(position) > len(TOKEN_PREFIX))


def check_position(position: str) -> None:
    if not is_position(position):
        raise ValueError(f"unknown position {position!r}; choose from {POSITIONS} or 'token:WORD' "
                         f"('token:doctor|nurse': the last token of the first of these words in the user message)")


def token_index(batch: ChatBatch, position: str) -> torch.Tensor:
    """``[batch]`` index of the last token of the first whole-word occurrence, in each user message,
    of one of the words of ``position`` = ``token:WORD|WORD2|...`` (case-insensitive)."""
    import re

    words = [w for w in position[len(TOKEN_PREFIX):].split("|") if w]
    if batch.offsets is None or batch.user_spans is None:
        raise ValueError(f"position {position!r} needs a batch with token offsets (Workbench.tokenize)")
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    out = []
    for i, (text, (start, end)) in enumerate(zip(batch.texts, batch.user_spans)):
        m = pattern.search(text, start, end)
        if m is None:
            raise ValueError(f"position {position!r}: prompt {i} does not contain any of {words}")
        ends = batch.offsets[i, :, 1]
        starts = batch.offsets[i, :, 0]
        hit = ((starts < m.end()) & (ends > m.start())).nonzero().flatten()
        out.append(int(hit[-1]))
    return torch.tensor(out, dtype=torch.long)


def position_mask(batch: ChatBatch, position: str) -> torch.Tensor:
    """``[batch, pos]`` bool mask of the tokens a position choice reads."""
    if position.startswith(TOKEN_PREFIX):
        mask = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
        mask[torch.arange(len(batch)), token_index(batch, position)] = True
        return mask
    if position in ("mean", "all"):
        return batch.attention_mask.bool()
    if position.startswith("post_instruction"):
        return batch.post_instruction_mask
    if position.startswith("response"):
        return batch.response_mask
    raise ValueError(f"unknown position {position!r}; choose from {POSITIONS}")


def reduce_positions(acts: torch.Tensor, batch: ChatBatch, position: str) -> torch.Tensor:
    """Reduce ``acts`` ``[batch, pos, *shape]`` to the chosen token positions.

    Returns ``[batch, *shape]`` for last / *_mean, ``[batch, k, *shape]`` for post_instruction
    (k template tokens, the same for every prompt), and ``[n_tokens, *shape]`` (rows in batch
    order) for the ragged choices all / response.
    """
    if position == "last":
        return acts[torch.arange(acts.shape[0]), batch.last_index.to(acts.device)]
    if position.startswith(TOKEN_PREFIX):
        return acts[torch.arange(acts.shape[0]), token_index(batch, position).to(acts.device)]
    mask = position_mask(batch, position).to(acts.device)
    if position in RAGGED:
        return acts[mask]
    counts = mask.sum(1)
    if (counts == 0).any():
        raise ValueError(f"position {position!r}: some prompts have no such tokens (no response given?)")
    if position == "post_instruction":
        if (counts != counts[0]).any():
            raise ValueError("post_instruction tokens differ in number across prompts; use post_instruction_mean")
        return acts[mask].reshape(acts.shape[0], int(counts[0]), *acts.shape[2:])
    weights = mask.to(acts.dtype).reshape(*mask.shape, *([1] * (acts.dim() - 2)))
    return (acts * weights).sum(1) / counts.reshape(-1, *([1] * (acts.dim() - 2))).to(acts.dtype)


def rows_per_prompt(batch: ChatBatch, position: str) -> torch.Tensor:
    """``[batch]`` how many rows each prompt contributes to a reduced tensor."""
    if position in RAGGED:
        return position_mask(batch, position).sum(1)
    return torch.ones(len(batch), dtype=torch.long)


SITE_GROUPS = {
    "resid_post": "blocks.{l}.hook_resid_post",
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "z": "blocks.{l}.attn.hook_z",
}


def site_name(layer: int, kind: str = "resid_post") -> str:
    """The hook name of ``kind`` (a :data:`SITE_GROUPS` key) at ``layer``: ``site_name(3)`` is
    ``"blocks.3.hook_resid_post"``."""
    if kind not in SITE_GROUPS:
        raise ValueError(f"unknown site kind {kind!r}; known: {', '.join(SITE_GROUPS)}")
    return SITE_GROUPS[kind].format(l=layer)


def expand_sites(spec: str, n_layers: int) -> list[str]:
    """``"resid_post,z"`` -> every layer's sites of those kinds; full site names pass through."""
    out: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        out.extend([SITE_GROUPS[part].format(l=l) for l in range(n_layers)] if part in SITE_GROUPS else [part])
    return out
