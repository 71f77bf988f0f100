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
                  labels: torch.Tensor, share_prefix: bool = True) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not ``-100``.

    ``input_ids`` / ``attention_mask`` / ``labels``: ``[batch, pos]``, right-padded (the collator's).
    """
    hidden = hidden_states(model, input_ids, attention_mask, share_prefix=share_prefix)[:, :-1]
    targets = labels[:, 1:]
    sel = targets != IGNORE_INDEX
    if not bool(sel.any()):
        return hidden.sum() * 0.0
    _, head = decoder_and_head(model)
    return F.cross_entropy(head(hidden[sel]).float(), targets[sel])
