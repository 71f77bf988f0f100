"""Choosing which concept directions CAFT ablates, without out-of-distribution data, and checking
what is left afterwards.

* :func:`attribute_scores`: how well each direction's projection separates a labelled attribute
  of the *training* prompts (AUROC of the projection, folded to >= 0.5), e.g. the profession's
  stereotypical gender (the spurious attribute) and the blank's case (the intended one).
* :func:`probe_pick`: the automatic choice: keep the directions that separate the spurious
  attribute (score >= ``min_score``) better than the intended one by ``margin``.
* :func:`leakage_check`: after CAFT, does the model still carry the spurious attribute *outside*
  the ablated subspace? A cross-validated logistic probe on ``x - (x Q) Q^T`` at each ablated site.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..concepts import ConceptSet
from ..interventions import Ablate


def _auroc(scores: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores))


def attribute_scores(cs: ConceptSet, acts: dict[str, torch.Tensor], labels: Mapping[str, Sequence[int]]
                     ) -> list[dict]:
    """One row per concept: ``{name, site, index, <attribute>: folded AUROC, ...}``.

    ``acts``: ``{site: [n, d]}`` one row per prompt (e.g. ``position="last"``); ``labels``:
    ``{attribute: [n] 0/1}``."""
    rows, count = [], {}
    for c in cs:
        if c.site not in acts:
            raise ValueError(f"no activations for site {c.site!r} (have {sorted(acts)})")
        proj = (acts[c.site].double() @ c.direction.double()).numpy()
        i = count.get(c.site, 0)
        count[c.site] = i + 1
        row = {"name": c.name, "site": c.site, "index": i}
        for attr, y in labels.items():
            a = _auroc(proj, np.asarray(y))
            row[attr] = max(a, 1 - a)
        rows.append(row)
    return rows


def probe_pick(cs: ConceptSet, scores: list[dict], spurious: str, intended: str,
               min_score: float = 0.65, margin: float = 0.05) -> tuple[ConceptSet, list[str]]:
    """Mark the concepts whose projection separates ``spurious`` (AUROC >= ``min_score``) better
    than ``intended`` (by ``margin``); returns the marked copy and the picked names. If none
    passes at a site, that site keeps its single best spurious direction (CAFT needs one)."""
    out = cs.select()
    picked = [r["name"] for r in scores
              if r[spurious] >= min_score and r[spurious] >= r[intended] + margin]
    for site in out.sites:
        site_rows = [r for r in scores if r["site"] == site]
        if site_rows and not any(r["name"] in picked for r in site_rows):
            best = max(site_rows, key=lambda r: r[spurious] - r[intended])
            picked.append(best["name"])
    for c in out:
        c.selected = c.name in picked
    return out, picked


def complement(x: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """``x - (x Q) Q^T`` with ``Q`` an orthonormal basis of ``directions`` ``[k, d]``."""
    from ..interventions.residual import orthonormalize

    q = orthonormalize(directions).to(x.dtype)
    return x - (x @ q) @ q.T


def probe_accuracy(x: torch.Tensor, y: Sequence[int], folds: int = 5, seed: int = 0) -> float:
    """Mean cross-validated accuracy of an L2 logistic regression (standardized features)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, x.double().numpy(), np.asarray(y), cv=cv).mean())


def leakage_check(acts: dict[str, torch.Tensor], ablate: Ablate, labels: Mapping[str, Sequence[int]]) -> list[dict]:
    """Per ablated site and attribute: probe accuracy on the full activations and on their
    complement of the ablated subspace (``acts``: ``{site: [n, d]}``, one row per prompt)."""
    rows = []
    for site in ablate.sites:
        x = acts[site]
        rest = complement(x, ablate.raw[site])
        for attr, y in labels.items():
            rows.append({"site": site, "attribute": attr, "k": int(ablate.Q[site].shape[1]),
                         "probe_full": probe_accuracy(x, y), "probe_complement": probe_accuracy(rest, y)})
    return rows
