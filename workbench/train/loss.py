"""The training loss, computed only where it is needed (see :mod:`workbench._forward`): the
shared prefix of a batch runs once, and logits are computed only at positions that predict a
response token. Same value as ``model(input_ids, labels=labels).loss`` (mean cross-entropy over
labelled tokens) up to float rounding."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .._forward import decoder_and_head, hidden_states, packed_hidden_states
from .data import IGNORE_INDEX


def response_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  labels: torch.Tensor, share_prefix: bool = True, num_items=None,
                  weights: torch.Tensor | None = None, pack: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not ``-100``.

    ``input_ids`` / ``attention_mask`` / ``labels``: ``[batch, pos]``, right-padded (the collator's).
    ``num_items``: divide the summed loss by this count instead (the labelled tokens of a whole
    optimizer step across accumulation steps and processes, as the HF Trainer passes it).
    ``weights``: ``[batch, pos]`` per-token loss weights (aligned with ``labels``): the weighted sum
    is divided by the labelled-token count as above, so a weight of 2 doubles a token's gradient.
    ``pack``: run the batch as one row of its real tokens (:func:`workbench._forward.packed_hidden_states`:
    no padding computed, attention per example); the same loss up to float rounding.
    """
    targets = labels[:, 1:]
    sel = targets != IGNORE_INDEX
    if pack:
        packed, packing = packed_hidden_states(model, input_ids, attention_mask, share_prefix=share_prefix)
        if not bool(sel.any()):
            return packed.sum() * 0.0
        selected = packed[0, packing.index[:, :-1][sel]]
    else:
        hidden = hidden_states(model, input_ids, attention_mask, share_prefix=share_prefix)[:, :-1]
        if not bool(sel.any()):
            return hidden.sum() * 0.0
        selected = hidden[sel]
    _, head = decoder_and_head(model)
    logits = head(selected).float()
    if weights is not None:
        total = (F.cross_entropy(logits, targets[sel], reduction="none") * weights[:, 1:][sel].to(logits)).sum()
        count = sel.sum() if num_items is None else num_items
        return total / torch.as_tensor(count).to(logits.device)
    if num_items is None:
        return F.cross_entropy(logits, targets[sel])
    return F.cross_entropy(logits, targets[sel], reduction="sum") / torch.as_tensor(num_items).to(logits.device)


class TrainModule(nn.Module):
    """What the HF Trainer trains: the model (``core``) plus intervention parameters (``extras``).

    The Trainer passes ``num_items_in_batch`` (labelled tokens of the whole step: every accumulated
    micro-batch and, under ``torchrun`` / ``accelerate launch``, every process): the loss is the sum over this
    micro-batch divided by it, so several processes or accumulation steps give the same gradient as
    one batch of the global size. ``pack``: padding-free batches (see :func:`response_loss`)."""

    accepts_loss_kwargs = True

    def __init__(self, core: nn.Module, extras: nn.Module | None = None, pack: bool = False):
        super().__init__()
        self.core = core
        self.extras = extras if extras is not None else nn.Module()
        self.pack = pack

    def forward(self, input_ids, attention_mask=None, labels=None, num_items_in_batch=None, loss_weights=None, **_):
        if labels is None:
            return self.core(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return {"loss": response_loss(self.core, input_ids, attention_mask, labels, num_items=num_items_in_batch,
                                      weights=loss_weights, pack=self.pack)}
