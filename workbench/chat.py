"""Chat formatting with the model's own template, padding, and token masks.

Every prompt is rendered with ``tokenizer.apply_chat_template``; character offsets then tell, per
token, whether it belongs to the response and whether it is one of the *post-instruction* tokens
(the template tokens after the user message and before the response, e.g. ChatML's
``<|im_end|>\\n<|im_start|>assistant\\n``), where refusal is decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ChatBatch:
    """A tokenized, padded batch. All tensors are ``[batch, pos]``.

    input_ids (long), attention_mask (1 = real token), prompt_mask (tokens of the rendered prompt,
    generation prompt included), response_mask (tokens of the response, closing tag included),
    post_instruction_mask (template tokens after the user message), padding_side ("left"/"right").
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_mask: torch.Tensor
    response_mask: torch.Tensor
    post_instruction_mask: torch.Tensor
    padding_side: str
    texts: list[str]
    offsets: torch.Tensor | None = None   # [batch, pos, 2] character span of each token in its text (-1 on padding)
    user_spans: list[tuple[int, int]] | None = None  # (start, end) character span of each user message

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> ChatBatch:
        moved: dict[str, Any] = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}
        return ChatBatch(**moved)

    @property
    def last_index(self) -> torch.Tensor:
        """``[batch]`` index of the last real token of each row."""
        if self.padding_side == "left":
            return torch.full((len(self),), self.input_ids.shape[1] - 1, dtype=torch.long)
        return self.attention_mask.sum(1) - 1


class ChatFormatter:
    """Renders prompts (and optional responses) with the tokenizer's chat template.

    ``system_prompt=None`` keeps the template's default (SmolLM2 inserts its own system message);
    ``system_prompt=""`` renders an empty system message, which turns such a default off.
    Tokenizers without a chat template fall back to plain text: no post-instruction tokens then.
    """

    def __init__(self, tokenizer, system_prompt: str | None = None, max_length: int = 1024):
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError("ChatFormatter needs a fast tokenizer (character offsets)")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    def _messages(self, prompt: str, response: str | None) -> list[dict]:
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        messages.append({"role": "user", "content": prompt})
        if response is not None:
            messages.append({"role": "assistant", "content": response})
        return messages

    def render(self, prompt: str, response: str | None = None) -> tuple[str, int, int]:
        """Return ``(text, user_end, prompt_end)``: the rendered text, the character where the user
        message ends, and the character where the response starts (= len of the prompt part)."""
        if not self.has_template:
            return prompt + (response or ""), len(prompt), len(prompt)
        head = self.tokenizer.apply_chat_template(
            self._messages(prompt, None), tokenize=False, add_generation_prompt=True
        )
        user_end = head.rfind(prompt) + len(prompt) if prompt else len(head)
        if response is None:
            return head, user_end, len(head)
        full = self.tokenizer.apply_chat_template(self._messages(prompt, response), tokenize=False)
        if not full.startswith(head):
            raise ValueError("chat template: the prompt rendering is not a prefix of prompt + response")
        return full, user_end, len(head)

    def encode(
        self,
        prompts: Sequence[str],
        responses: Sequence[str] | None = None,
        padding_side: str = "left",
    ) -> ChatBatch:
        """Tokenize and pad. Left padding (the default) puts every last prompt token at position -1,
        which batched generation and last-token reads need; right padding suits training."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string")
        if len(prompts) == 0:
            raise ValueError("no prompts to encode")
        if responses is not None and len(responses) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        for what, items in (("prompt", prompts), ("response", responses or [])):
            for i, item in enumerate(items):
                if not isinstance(item, str):
                    raise TypeError(f"{what} {i} is a {type(item).__name__}, not a string: {item!r:.80}")
        rows, texts, spans = [], [], []
        for i, prompt in enumerate(prompts):
            text, user_end, prompt_end = self.render(prompt, None if responses is None else responses[i])
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            if len(ids) > self.max_length:
                raise ValueError(f"prompt {i} has {len(ids)} tokens, more than max_length={self.max_length}")
            starts = torch.tensor([s for s, _ in offsets], dtype=torch.long)
            ends = torch.tensor([e for _, e in offsets], dtype=torch.long)
            response = starts >= prompt_end
            post = (ends > user_end) & ~response if self.has_template else torch.zeros_like(response)
            rows.append((torch.tensor(ids, dtype=torch.long), ~response, response, post,
                         torch.tensor(offsets, dtype=torch.long).reshape(-1, 2)))
            texts.append(text)
            spans.append((user_end - len(prompt), user_end))
        width = max(len(r[0]) for r in rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        def pad(t: torch.Tensor, value) -> torch.Tensor:
            fill = torch.full((width - len(t), *t.shape[1:]), value, dtype=t.dtype)
            return torch.cat([fill, t]) if padding_side == "left" else torch.cat([t, fill])

        return ChatBatch(
            input_ids=torch.stack([pad(r[0], pad_id) for r in rows]),
            attention_mask=torch.stack([pad(torch.ones_like(r[0]), 0) for r in rows]),
            prompt_mask=torch.stack([pad(r[1], False) for r in rows]),
            response_mask=torch.stack([pad(r[2], False) for r in rows]),
            post_instruction_mask=torch.stack([pad(r[3], False) for r in rows]),
            padding_side=padding_side,
            texts=texts,
            offsets=torch.stack([pad(r[4], -1) for r in rows]),
            user_spans=spans,
        )
