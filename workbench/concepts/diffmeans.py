"""Difference of means: ``mean(x | positive) - mean(x | negative)``, normalized, per site.

The refusal-direction recipe (Arditi et al. 2024): harmful minus harmless activations at the
post-instruction tokens. Works on an :class:`~workbench.ActivationStore` (labels from its
manifest), a ``{site: Tensor[N, d]}`` mapping with labels, or two unlabelled sets
(:func:`diff_means_between`, e.g. two datasets or two models on the same prompts).

Score: the standardized separation of the two classes along the direction (Cohen's d of the
projections, pooled standard deviation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._data import as_features
from .conceptset import Concept, ConceptSet, provenance


def _direction(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, dict]:
    pos, neg = pos.double(), neg.double()
    v = pos.mean(0) - neg.mean(0)
    norm = float(v.norm())
    if norm == 0.0:
        raise ValueError("the two sets have identical means: no difference-of-means direction")
    u = v / norm
    pp, pn = pos @ u, neg @ u
    pooled = ((pp.var(correction=0) * len(pp) + pn.var(correction=0) * len(pn)) / (len(pp) + len(pn))).sqrt()
    effect = float((pp.mean() - pn.mean()) / pooled) if float(pooled) > 0 else float("inf")
    return u.float(), {"mean_diff_norm": norm, "effect_size": effect, "n_pos": len(pos), "n_neg": len(neg)}


def diff_means(source, labels=None, sites: Sequence[str] | str | None = None, *, positive: int = 1,
               negative: int = 0, label: str = "", model_id: str | None = None,
               dataset_fingerprint: str | None = None, name: str = "diffmeans") -> ConceptSet:
    """One concept per site: the unit difference of class means.

    Args:
        source: ActivationStore, ``{site: Tensor[N, d]}`` or ``Tensor[N, d]`` (then ``sites`` is its name).
        labels: ``[N]`` class per row (an ActivationStore supplies its own).
        positive, negative: the two label values; the direction points towards ``positive``.
        label: the concepts' label (e.g. ``"harmful - benign"``); empty leaves it to a person.
        model_id, dataset_fingerprint: provenance (an ActivationStore supplies both).
    """
    f = as_features(source, sites, labels, model_id=model_id, dataset_fingerprint=dataset_fingerprint)
    if f.labels is None:
        raise ValueError("diff_means needs labels (one per row), or use diff_means_between(a, b)")
    pos_mask, neg_mask = f.labels == positive, f.labels == negative
    if not pos_mask.any() or not neg_mask.any():
        raise ValueError(f"need rows of both classes: {int(pos_mask.sum())} with label {positive}, "
                         f"{int(neg_mask.sum())} with label {negative}")
    out = ConceptSet()
    for site, x in f.x.items():
        u, stats = _direction(x[pos_mask], x[neg_mask])
        prov = provenance("diff_means", f.model_id, f.dataset_fingerprint,
                          dict(positive=positive, negative=negative, position=f.position, **stats))
        out.add(Concept(f"{name}/{site}", site, u, label, stats["effect_size"], provenance=prov))
    return out


def diff_means_between(a, b, sites: Sequence[str] | str | None = None, *, label: str = "",
                       model_id: str | None = None, dataset_fingerprint: str | None = None,
                       name: str = "diffmeans") -> ConceptSet:
    """Difference of means between two unlabelled sets ``a`` minus ``b`` (each a store, a mapping
    or a tensor with the same sites), e.g. two datasets, or a fine-tuned and a base model."""
    fa = as_features(a, sites, model_id=model_id, dataset_fingerprint=dataset_fingerprint)
    fb = as_features(b, list(fa.x))
    out = ConceptSet()
    for site in fa.x:
        if fa.x[site].shape[1] != fb.x[site].shape[1]:
            raise ValueError(f"site {site!r}: widths {fa.x[site].shape[1]} and {fb.x[site].shape[1]} differ")
        u, stats = _direction(fa.x[site], fb.x[site])
        prov = provenance("diff_means", fa.model_id, fa.dataset_fingerprint,
                          dict(other_model_id=fb.model_id, other_dataset_fingerprint=fb.dataset_fingerprint, **stats))
        out.add(Concept(f"{name}/{site}", site, u, label, stats["effect_size"], provenance=prov))
    return out

