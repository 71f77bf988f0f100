"""The default backend: a TransformerLens ``TransformerBridge`` over the HF model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager

from .base import Backend, HookFn, StopForward


class TransformerLensBackend(Backend):
    name = "transformer_lens"

    def __init__(self, model, tokenizer, model_id: str):
        super().__init__(model, tokenizer, model_id)
        from transformer_lens.model_bridge import TransformerBridge

        # The bridge swaps the HF submodules for bridge components in place (same weights, same
        # numbers), so `model(...)` itself fires the HookPoints.
        logging.getLogger("transformer_lens").setLevel(logging.WARNING)
        self.bridge = TransformerBridge.boot_transformers(model_id, hf_model=model, tokenizer=tokenizer)
        self.points = dict(self.bridge.hook_dict)  # the property rebuilds aliases on every access
        self.valid_hooks = set(self.points)

    installed = 0  # hooks installed through install() and not yet removed
    persistent_hooks = True  # HookPoints fire on every call of the model (generate, Trainer, _forward)

    def installed_count(self) -> int:
        return self.installed

    @contextmanager
    def install(self, hooks: Sequence[tuple[str, HookFn]]):
        added = []
        try:
            for name, fn in hooks:
                point = self.points[name]
                point.add_hook(lambda tensor, hook, fn=fn: fn(tensor))
                added.append((point, point.fwd_hooks[-1]))
                self.installed += 1
            yield
        finally:
            for point, handle in reversed(added):
                handle.hook.remove()
                point.fwd_hooks = [h for h in point.fwd_hooks if h is not handle]
                self.installed -= 1

    def run(self, input_ids, attention_mask, hooks=(), **kwargs):
        with self.install(hooks):
            try:
                return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            except StopForward:
                return None

    def hook_count(self) -> int:
        return sum(len(p.fwd_hooks) + len(p.bwd_hooks) for p in self.points.values()) + sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) for m in self.model.modules()
        )

