"""The training loss, computed only where it is needed (see :mod:`workbench._forward`): the
shared prefix of a batch runs once, and logits are computed only at positions that predict a
response token. Same value as ``model(input_ids, labels=labels).loss`` (mean cross-entropy over
labelled tokens) up to float rounding."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .._forward import decoder_and_head, hidden_states
from .data import IGNORE_INDEX


def response_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  labels: torch.Tensor, share_prefix: bool = True, num_items=None) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not ``-100``.

    ``input_ids`` / ``attention_mask`` / ``labels``: ``[batch, pos]``, right-padded (the collator's).
    ``num_items``: divide the summed loss by this count instead (the labelled tokens of a whole
    optimizer step across accumulation steps and processes, as the HF Trainer passes it).
    """
    hidden = hidden_states(model, input_ids, attention_mask, share_prefix=share_prefix)[:, :-1]
    targets = labels[:, 1:]
    sel = targets != IGNORE_INDEX
    if not bool(sel.any()):
        return hidden.sum() * 0.0
    _, head = decoder_and_head(model)
    logits = head(hidden[sel]).float()
    if num_items is None:
        return F.cross_entropy(logits, targets[sel])
    return F.cross_entropy(logits, targets[sel], reduction="sum") / torch.as_tensor(num_items).to(logits.device)
