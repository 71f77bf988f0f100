"""LEACE: LEAst-squares Concept Erasure (Belrose et al. 2023, arXiv:2306.03819).

The fit is EleutherAI's ``concept-erasure`` (``LeaceFitter``, exact settings: no covariance
shrinkage, no trace constraint); this module adapts it to the workbench (fold-safe
:func:`erasure_check`, an eraser that is a ``fn(tensor, site)`` hook, safetensors files). The
closed-form eraser:

    r(x) = x - W^+ P_{W Sigma_XZ} W (x - E[x])

with ``Sigma_XX`` the covariance of X, ``Sigma_XZ`` the cross-covariance with the (one-hot)
concept Z, ``W = (Sigma_XX^{1/2})^+`` the whitening matrix and ``P_{W Sigma_XZ}`` the orthogonal
projection onto the column space of ``W Sigma_XZ``. After erasure ``Cov(r(X), Z) = 0`` on the
fitting data, so no linear classifier beats a constant predictor there; among all such affine
erasers r changes X least in mean squared norm. For binary z the edit has rank 1: it moves
x along the class-mean difference ``Sigma_XZ``.

Fitted tensors are stored as ``x' = x - ((x - mean) @ proj_right.T) @ proj_left.T`` with
``proj_left = W^+ U`` ``[d, r]`` and ``proj_right = U^T W`` ``[r, d]`` (U: orthonormal basis of
``col(W Sigma_XZ)``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from .probes import _check, _frame, _groups, _stack, _torch_scores, fit_predict, make_folds
from .stats import score_metrics


def _one_hot(z, n: int) -> torch.Tensor:
    """``[N]`` integer labels -> ``[N, k]`` one-hot float64; ``[N, k]`` float passes through."""
    z = torch.as_tensor(z)
    if z.dim() == 2:
        if z.shape[0] != n:
            raise ValueError(f"z has {z.shape[0]} rows, X has {n}")
        return z.double()
    if z.dim() != 1 or z.shape[0] != n:
        raise ValueError(f"z must be [N] class labels or [N, k], got {tuple(z.shape)} for N={n}")
    if z.dtype.is_floating_point and not torch.equal(z, z.round()):
        raise ValueError("1-D z must hold integer class labels")
    z = z.long()
    if z.min() < 0:
        raise ValueError("class labels must be >= 0")
    if torch.unique(z).numel() < 2:
        raise ValueError("z must contain at least two classes")
    return torch.nn.functional.one_hot(z, int(z.max()) + 1).double()


class LeaceEraser:
    """Fitted LEACE eraser for one site. ``eraser(x)`` works on ``[..., d]`` tensors.

    >>> eraser = LeaceEraser().fit(X, labels)      # X [N, d], labels [N] (0/1 or class ids)
    >>> x_erased = eraser(acts)                    # acts [batch, pos, d]: same shape/dtype/device
    """

    def __init__(self, tol: float | None = None):
        self.tol = tol  # relative eigen/singular-value cutoff; None: max(N, d) * float64 eps
        self.mean: torch.Tensor | None = None  # [d]
        self.proj_left: torch.Tensor | None = None  # [d, r]
        self.proj_right: torch.Tensor | None = None  # [r, d]
        self.n_fit = 0
        self._cache: dict = {}

    # -- fitting -------------------------------------------------------------------------
    def fit(self, X: torch.Tensor, z) -> LeaceEraser:
        """Fit on ``X [N, d]`` and concept labels ``z`` (``[N]`` class ids or ``[N, k]``) with
        ``concept_erasure.LeaceFitter`` in float64 (exact LEACE: no shrinkage, no trace constraint;
        singular values of ``W Sigma_XZ`` below ``tol`` relative to the largest are dropped)."""
        from concept_erasure import LeaceFitter

        if X.dim() != 2:
            raise ValueError(f"X must be [N, d], got {tuple(X.shape)}")
        if not torch.isfinite(X).all():
            raise ValueError("X contains NaN or inf values")
        n, d = X.shape
        Xd = X.detach().double()
        Z = _one_hot(z, n).to(Xd.device)
        fitter = LeaceFitter(d, Z.shape[1], "leace", affine=True, constrain_cov_trace=False, shrinkage=False,
                             device=Xd.device, dtype=torch.float64, svd_tol=1e-300).update(Xd, Z)
        eraser = fitter.eraser
        # the singular values of W Sigma_XZ: row norms of proj_right @ Sigma_XZ (= U^T W Sigma_XZ)
        sv = (eraser.proj_right @ fitter.sigma_xz).norm(dim=1)
        tol = self.tol if self.tol is not None else max(n, d) * torch.finfo(torch.float64).eps
        keep = sv > tol * sv.max().clamp_min(1e-300)
        self.mean, self.proj_left, self.proj_right = fitter.mean_x.clone(), eraser.proj_left[:, keep], eraser.proj_right[keep]
        self.n_fit = n
        self._cache = {}
        return self

    # -- applying ------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """Rank of the edit ``P = proj_left @ proj_right`` (1 for a binary concept)."""
        return 0 if self.proj_left is None else self.proj_left.shape[1]

    @property
    def d(self) -> int:
        return 0 if self.mean is None else self.mean.shape[0]

    @property
    def P(self) -> torch.Tensor:
        """The oblique projection ``W^+ P_{W Sigma_XZ} W`` ``[d, d]`` that is subtracted (float64)."""
        _, left, right = self._fitted()
        return left @ right

    def _fitted(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mean, proj_left, proj_right)``; raises if the eraser is not fitted."""
        if self.mean is None or self.proj_left is None or self.proj_right is None:
            raise RuntimeError("LeaceEraser is not fitted; call .fit(X, z) or load one")
        return self.mean, self.proj_left, self.proj_right

    def _params(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = tuple(t.to(device=device, dtype=dtype) for t in self._fitted())
        return self._cache[key]

    def __call__(self, x: torch.Tensor, site: str | None = None) -> torch.Tensor:
        """Erase: ``x [..., d]`` -> same shape, dtype and device. ``site`` is ignored, so the
        eraser can be passed directly as a ``fn(tensor, site)`` hook."""
        self._fitted()
        if x.shape[-1] != self.d:
            raise ValueError(f"eraser fitted on d={self.d}, got a tensor of shape {tuple(x.shape)}")
        work = torch.promote_types(x.dtype, torch.float32)
        mean, left, right = self._params(x.device, work)
        xw = x.to(work)
        return (xw - ((xw - mean) @ right.T) @ left.T).to(x.dtype)

    # -- persistence (safetensors + JSON metadata; no pickle) ----------------------------
    def to_dict(self) -> dict:
        """Plain dict: float64 tensors ``mean``, ``proj_left``, ``proj_right`` and JSON-able ``meta``."""
        mean, left, right = self._fitted()
        meta = {"format": "workbench.LeaceEraser", "version": 1, "d": self.d, "rank": self.rank,
                "n_fit": self.n_fit, "tol": self.tol}
        return {"mean": mean.cpu(), "proj_left": left.cpu(), "proj_right": right.cpu(), "meta": meta}

    @classmethod
    def from_dict(cls, state: Mapping) -> LeaceEraser:
        meta = dict(state.get("meta", {}))
        if meta.get("format", "workbench.LeaceEraser") != "workbench.LeaceEraser":
            raise ValueError(f"not a LeaceEraser state: format={meta.get('format')!r}")
        e = cls(tol=meta.get("tol"))
        e.mean, e.proj_left, e.proj_right = (torch.as_tensor(state[k]).double() for k in ("mean", "proj_left", "proj_right"))
        if e.proj_left.shape != (e.d, e.proj_right.shape[0]) or e.proj_right.shape[1] != e.d:
            raise ValueError("inconsistent LeaceEraser tensor shapes")
        e.n_fit = int(meta.get("n_fit", 0))
        return e

    def save(self, path: str | Path) -> Path:
        """Write a ``.safetensors`` file; the metadata header holds the JSON ``meta``."""
        state = self.to_dict()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: state[k].contiguous() for k in ("mean", "proj_left", "proj_right")}
        save_file(tensors, str(path), metadata={"meta": json.dumps(state["meta"])})
        return path

    @classmethod
    def load(cls, path: str | Path) -> LeaceEraser:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        return cls.from_dict({**load_file(str(path)), "meta": meta})

    def __repr__(self) -> str:
        if self.mean is None:
            return "LeaceEraser(unfitted)"
        return f"LeaceEraser(d={self.d}, rank={self.rank}, n_fit={self.n_fit})"


def erasure_hook(erasers: Mapping[str, LeaceEraser]) -> Callable[[torch.Tensor, str], torch.Tensor]:
    """A ``fn(tensor, site) -> tensor`` hook applying ``erasers[site]``; for a ``[..., H, dh]``
    head tensor at ``site`` it applies any ``erasers[f"{site}[h]"]`` to head h. Others pass through."""

    def fn(tensor: torch.Tensor, site: str) -> torch.Tensor:
        if site in erasers:
            return erasers[site](tensor)
        heads = {h: erasers[f"{site}[{h}]"] for h in range(tensor.shape[-2]) if f"{site}[{h}]" in erasers} \
            if tensor.dim() >= 2 else {}
        if not heads:
            return tensor
        out = tensor.clone()
        for h, e in heads.items():
            out[..., h, :] = e(tensor[..., h, :])
        return out

    return fn


def fit_erasers(features: Mapping[str, torch.Tensor], labels) -> dict[str, LeaceEraser]:
    """One eraser per site, fitted on all of ``features`` (site -> ``[N, d]``) and ``labels``."""
    names, y = _check(features, labels)
    return {s: LeaceEraser().fit(features[s], y) for s in names}


def erasure_check(
    features: Mapping[str, torch.Tensor],
    labels,
    n_folds: int = 5,
    seed: int = 0,
    method: str = "torch",
    l2: float = 1.0,
    n_boot: int = 200,
) -> pd.DataFrame:
    """Probe accuracy per site before and after LEACE, on held-out data.

    For each fold (``make_folds``, same as :func:`probe_sweep`) the eraser is fit on the
    training fold only and applied to both training and test folds; the probe is then
    trained on the erased training fold and scored on the erased test fold. ``*_before``
    columns are the plain probe on the same folds. Returns one row per site: site, kind,
    layer, head, d, n, accuracy_before (+ CI), auroc_before, accuracy_after (+ CI),
    auroc_after (+ CI), rank.
    """
    names, y = _check(features, labels, n_folds)
    folds = make_folds(y, n_folds, seed)
    before, after = np.empty((len(names), len(y))), np.empty((len(names), len(y)))
    fold_of = np.empty(len(y), dtype=np.int64)
    ranks = np.zeros(len(names), dtype=np.int64)
    for f, (tr, te) in enumerate(folds):
        fold_of[te] = f
        trt, tet = torch.as_tensor(tr), torch.as_tensor(te)
        raw_tr = {s: features[s][trt].detach().cpu() for s in names}
        raw_te = {s: features[s][tet].detach().cpu() for s in names}
        erased_tr, erased_te = {}, {}
        for i, s in enumerate(names):
            e = LeaceEraser().fit(raw_tr[s], y[tr])
            erased_tr[s], erased_te[s] = e(raw_tr[s].double()), e(raw_te[s].double())
            ranks[i] = max(ranks[i], e.rank)
        if method == "torch":  # both variants in one batched call per width
            for idx in _groups(names, raw_tr):
                sub = [names[i] for i in idx]
                for src_tr, src_te, out in ((raw_tr, raw_te, before), (erased_tr, erased_te, after)):
                    Xtr, Xte = (_stack(src, sub, "cpu") for src in (src_tr, src_te))  # erased: float64
                    (sc,) = _torch_scores(Xtr, y[tr], [Xte], l2)
                    out[np.ix_(np.asarray(idx), te)] = sc.double().numpy()
        else:
            (before[:, te],) = fit_predict(raw_tr, y[tr], [raw_te], method=method, l2=l2)
            (after[:, te],) = fit_predict(erased_tr, y[tr], [erased_te], method=method, l2=l2)
    widths = [features[s].shape[1] for s in names]
    mb = score_metrics(before, y, None, n_boot, seed)
    ma = score_metrics(after, y, None, n_boot, seed)
    cols = ["accuracy", "accuracy_ci_low", "accuracy_ci_high", "auroc", "auroc_ci_low", "auroc_ci_high"]
    renamed = [
        cast(pd.DataFrame, m[cols]).rename(columns=lambda c: c.replace(c.split("_")[0], c.split("_")[0] + tag, 1))
        for m, tag in ((mb, "_before"), (ma, "_after"))
    ]  # accuracy_ci_low -> accuracy_before_ci_low
    metrics = pd.concat([mb[["n"]], *renamed], axis=1)
    metrics["rank"] = ranks
    return _frame(names, widths, metrics)
