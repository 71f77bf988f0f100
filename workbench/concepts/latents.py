"""Choosing SAE latents as concept directions, CAFT's three ways; each returns a
:class:`~workbench.concepts.ConceptSet` of decoder directions.

:func:`latents_by_mean_diff` (mean latent activation, fine-tuned minus base or dataset A minus B),
:func:`latents_by_attribution` (``W_dec . grad x act`` of a named loss),
:func:`latents_by_diff_encoding` (the SAE's encoding of ``acts_ft - acts_base``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .conceptset import ConceptSet
from .sae import _as_wsae

if TYPE_CHECKING:
    from ..model import Workbench


def _acts(x, site: str | None = None) -> torch.Tensor:
    """A tensor, a ``{site: tensor}`` mapping or an ActivationStore -> ``[N, d]`` rows at ``site``."""
    from ._data import as_features

    if isinstance(x, torch.Tensor):
        return x.reshape(x.shape[0], -1).float()
    f = as_features(x, [site] if site else None)
    return next(iter(f.x.values()))


def _top(values: torch.Tensor, top: int, sign: str) -> tuple[list[int], list[float]]:
    if sign == "positive":
        key = values
    elif sign == "negative":
        key = -values
    elif sign == "abs":
        key = values.abs()
    else:
        raise ValueError(f"sign must be 'positive', 'negative' or 'abs', not {sign!r}")
    idx = key.topk(min(top, len(key))).indices
    if sign != "abs":
        idx = idx[key[idx] > 0]
    return idx.tolist(), values[idx].tolist()


def latents_by_mean_diff(sae, acts_a, acts_b, top: int = 20, *, site: str | None = None, sign: str = "positive",
                         dataset_fingerprint: str | None = None) -> ConceptSet:
    """CAFT (a): mean latent activation on ``acts_a`` minus on ``acts_b`` (fine-tuned minus base on
    the same tokens, or dataset A minus dataset B), top ``top`` latents by ``sign``."""
    w = _as_wsae(sae, site)
    a, b = _acts(acts_a, w.site), _acts(acts_b, w.site)
    diff = w.encode(a).mean(0) - w.encode(b).mean(0)
    idx, vals = _top(diff, top, sign)
    return w.concepts(idx, vals, "sae_mean_diff", {"top": top, "sign": sign, "n_a": len(a), "n_b": len(b)},
                      dataset_fingerprint)


def latents_by_diff_encoding(sae, acts_ft, acts_base, top: int = 20, *, site: str | None = None,
                             sign: str = "positive", dataset_fingerprint: str | None = None) -> ConceptSet:
    """CAFT (c): encode the per-token activation difference ``acts_ft - acts_base`` with the SAE and
    rank latents by the summed encoding (as CAFT's ``sae.encode(acts_diff).sum(0)``)."""
    w = _as_wsae(sae, site)
    a, b = _acts(acts_ft, w.site), _acts(acts_base, w.site)
    if a.shape != b.shape:
        raise ValueError(f"acts_ft {tuple(a.shape)} and acts_base {tuple(b.shape)} must be the same tokens")
    total = w.encode(a - b).sum(0)
    idx, vals = _top(total, top, sign)
    return w.concepts(idx, vals, "sae_diff_encoding", {"top": top, "sign": sign, "n_tokens": len(a)},
                      dataset_fingerprint)


LOSSES = ("response_nll", "nll")


def _loss_fn(loss: str | Callable) -> tuple[Callable, str]:
    if callable(loss):
        return loss, getattr(loss, "__name__", "custom")

    def nll(logits, batch, mask_name):
        mask = getattr(batch, mask_name)[:, 1:].bool() & batch.attention_mask[:, 1:].bool()
        if not mask.any():
            raise ValueError(f"loss {loss!r}: no tokens to score (responses missing?)")
        lp = torch.log_softmax(logits[:, :-1].float(), -1)
        tok = lp.gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        return -(tok * mask).sum() / mask.sum()

    if loss == "response_nll":
        return (lambda logits, batch: nll(logits, batch, "response_mask")), loss
    if loss == "nll":
        return (lambda logits, batch: nll(logits, batch, "attention_mask")), loss
    raise ValueError(f"loss must be one of {LOSSES} or a callable(logits, batch) -> scalar, not {loss!r}")


def latent_attribution(sae, wb: Workbench, prompts: Sequence[str], responses: Sequence[str] | None = None, *,
                       site: str | None = None, loss: str | Callable = "response_nll", batch_size: int = 4,
                       progress: bool = False) -> torch.Tensor:
    """``[d_sae]`` mean attribution of each latent to ``loss``: ``f_j(x) * (W_dec[j] . dL/dx)`` summed
    over the scored tokens (response tokens for ``"response_nll"``, all for ``"nll"``), divided by
    their count.

    ``loss``: ``"response_nll"`` (mean next-token NLL of the responses: the fine-tuning loss),
    ``"nll"`` (all tokens) or ``callable(logits, batch) -> scalar``. Gradients are taken with
    ``torch.autograd.grad`` with respect to the site's activation only; model parameters get no
    ``.grad``. The hook lives in a ``wb.hooks`` scope."""
    w = _as_wsae(sae, site)
    return latent_attributions([w], wb, prompts, responses, loss=loss, batch_size=batch_size, progress=progress)[w.site]


def latent_attributions(saes: Sequence, wb: Workbench, prompts: Sequence[str], responses: Sequence[str] | None = None, *,
                        loss: str | Callable = "response_nll", batch_size: int = 4,
                        progress: bool = False) -> dict[str, torch.Tensor]:
    """:func:`latent_attribution` for SAEs at several sites (one per site) from one forward and one
    backward pass per batch: ``{site: [d_sae]}``."""
    ws = [_as_wsae(s) for s in saes]
    if len({w.site for w in ws}) != len(ws):
        raise ValueError("one SAE per site")
    fn, _ = _loss_fn(loss)
    if loss == "response_nll" and responses is None:
        raise ValueError("loss='response_nll' needs responses; use loss='nll' for prompts alone")
    decoders = {w.site: w.W_dec.float().cpu() for w in ws}
    total = {w.site: torch.zeros(w.d_sae, dtype=torch.float64) for w in ws}
    count = 0
    for lo in tqdm(range(0, len(prompts), batch_size), desc="attribution", disable=not progress):
        batch = wb.tokenize(prompts[lo:lo + batch_size], None if responses is None else responses[lo:lo + batch_size])
        batch = batch.to(wb.device)
        held: dict[str, torch.Tensor] = {}

        def leaf(t: torch.Tensor, name: str) -> torch.Tensor:
            # the first site reached becomes a leaf when nothing before it needs grad (a frozen
            # model); later sites stay in the graph, so each gets its total derivative
            held[name] = t if t.requires_grad else t.detach().requires_grad_(True)
            return held[name]

        with torch.enable_grad():
            logits = wb.forward(batch, hooks={w.site: leaf for w in ws}, grad=True)
            value = fn(logits, batch)
            grads = torch.autograd.grad(value, [held[w.site] for w in ws])
        mask = (batch.response_mask if loss == "response_nll" else batch.attention_mask).bool()
        n = int(mask.sum())
        for w, grad in zip(ws, grads):
            a = held[w.site].detach()[mask].reshape(n, -1).float().cpu()
            g = grad[mask].reshape(n, -1).float().cpu()
            with torch.no_grad():
                total[w.site] += (w.encode(a) * (g @ decoders[w.site].T)).sum(0).double()
        count += n
    return {site: (t / max(count, 1)).float() for site, t in total.items()}


def latents_by_attribution(sae, wb: Workbench, prompts: Sequence[str], responses: Sequence[str] | None = None, top: int = 20,
                           *, site: str | None = None, loss: str | Callable = "response_nll",
                           sign: str = "abs", batch_size: int = 4, progress: bool = False) -> ConceptSet:
    """CAFT (b): latents ranked by attribution ``W_dec . grad x act`` to ``loss`` (see
    :func:`latent_attribution`); ``sign="abs"`` ranks by magnitude."""
    w = _as_wsae(sae, site)
    attr = latent_attribution(w, wb, prompts, responses, site=w.site, loss=loss, batch_size=batch_size,
                              progress=progress)
    idx, vals = _top(attr, top, sign)
    name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
    from ..activations import fingerprint

    fp = fingerprint(prompts, responses, [str(i) for i in range(len(prompts))], [None] * len(prompts))
    out = w.concepts(idx, vals, "sae_attribution", {"top": top, "sign": sign, "loss": name,
                                                    "attributing_model": wb.model_id}, fp)
    return out


