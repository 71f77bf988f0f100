"""Backends run a forward pass with hook functions at TransformerLens site names.

``transformer_lens`` (default): a TransformerBridge wraps the HF model in place, so hooks live on
its HookPoints and fire on *any* call of the model (generate, HF Trainer, peft).
``nnsight``: the same site names mapped to module paths of the plain HF model, traced by nnsight.
"""

from .base import Backend, HookFn, StopForward

BACKENDS = ("transformer_lens", "nnsight")


def make_backend(name: str, model, tokenizer, model_id: str, remote: object = None) -> Backend:
    if remote is not None and name != "nnsight":
        raise ValueError("remote execution (NDIF) needs backend='nnsight'")
    if name == "transformer_lens":
        from .transformer_lens import TransformerLensBackend

        return TransformerLensBackend(model, tokenizer, model_id)
    if name == "nnsight":
        from .nnsight import NNsightBackend

        return NNsightBackend(model, tokenizer, model_id, remote=remote)
    raise ValueError(f"unknown backend {name!r}; choose from {BACKENDS}")


__all__ = ["BACKENDS", "Backend", "HookFn", "StopForward", "make_backend"]
