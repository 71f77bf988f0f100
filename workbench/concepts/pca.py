"""Principal components of activations, and of the *difference* of activations between two models.

:func:`pca`: the top principal axes of one model's activations at each site (centred; the same
axes as ``sklearn.decomposition.PCA`` up to sign). SmolLM2's residual stream has a massive
dimension (507) with ~97% of the variance: its first component is that one coordinate. Pass
``drop_dims=[507]`` to find the structure in the other 575 dimensions (the directions then have
0 in those coordinates).

:func:`pca_diff`: CAFT's directions. Run the fine-tuned and the base model on the same tokens
(response tokens only), take ``acts_ft - acts_base`` per token, centre it, and keep the top-k
right singular vectors (``torch.svd_lowrank``). Each concept's score is the fraction of the
difference's variance its component explains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ._data import as_features
from .conceptset import Concept, ConceptSet, provenance

if TYPE_CHECKING:
    from ..model import Workbench


# ----------------------------------------------------------------------------- the decomposition
def _flip_signs(components: torch.Tensor) -> torch.Tensor:
    """Deterministic signs, as scikit-learn's ``svd_flip(u_based_decision=False)``: the entry of
    largest magnitude in each component is positive."""
    idx = components.abs().argmax(1)
    signs = torch.sign(components[torch.arange(len(components)), idx])
    signs[signs == 0] = 1
    return components * signs.unsqueeze(1)


def principal_components(x: torch.Tensor, k: int, *, center: bool = True, method: str = "auto",
                         niter: int = 4, oversample: int = 10, seed: int = 0
                         ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Top-``k`` principal axes of ``x`` ``[N, d]``.

    Returns ``(components [k, d], variance [k], total variance)``; variance uses ``N - 1``.
    ``method``: ``"full"`` (exact: eigendecomposition of the covariance in float64, or an SVD when
    N < d), ``"lowrank"`` (``torch.svd_lowrank`` with ``q = k + oversample`` and ``niter`` power
    iterations, seeded: CAFT's choice, fast for large N) or ``"auto"`` (full when d <= 4096).
    """
    if x.dim() != 2:
        raise ValueError(f"expected [N, d], got {tuple(x.shape)}")
    n, d = x.shape
    if n < 2:
        raise ValueError("PCA needs at least 2 rows")
    k = min(k, d, n - 1 if center else n)
    if k < 1:
        raise ValueError("k must be >= 1")
    x = x.double()
    if center:
        x = x - x.mean(0)
    total = float(x.pow(2).sum()) / (n - 1)
    if method == "auto":
        method = "full" if d <= 4096 else "lowrank"
    if method == "full":
        if n >= d:
            evals, evecs = torch.linalg.eigh(x.T @ x / (n - 1))
            order = evals.argsort(descending=True)[:k]
            comps, var = evecs[:, order].T, evals[order].clamp_min(0)
        else:
            _, s, vh = torch.linalg.svd(x, full_matrices=False)
            comps, var = vh[:k], s[:k] ** 2 / (n - 1)
    elif method == "lowrank":
        q = min(k + oversample, n, d)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, s, v = torch.svd_lowrank(x, q=q, niter=niter)
        comps, var = v[:, :k].T, s[:k] ** 2 / (n - 1)
    else:
        raise ValueError(f"method must be 'auto', 'full' or 'lowrank', not {method!r}")
    return _flip_signs(comps).float(), var.float(), total


def _masked(x: torch.Tensor, drop_dims: Sequence[int] | None) -> torch.Tensor:
    if not drop_dims:
        return x
    x = x.clone()
    x[:, list(drop_dims)] = 0
    return x


def _concepts(out: ConceptSet, site: str, comps, var, total, prov: dict, name: str, drop_dims) -> None:
    if drop_dims:  # exactly 0 there (the eigensolver leaves ~1e-17)
        comps = comps.clone()
        comps[:, list(drop_dims)] = 0
    for i, (c, v) in enumerate(zip(comps, var)):
        ratio = float(v) / total if total > 0 else 0.0
        out.add(Concept(f"{name}/{site}/{i}", site, c, "", ratio, provenance=prov,
                        meta={"component": i, "explained_variance": float(v),
                              "dropped_dims": list(drop_dims or [])}))


# ----------------------------------------------------------------------------- one model
def pca(source, sites: Sequence[str] | str | None = None, k: int = 10, *, center: bool = True,
        drop_dims: Sequence[int] | None = None, method: str = "auto", niter: int = 4, seed: int = 0,
        model_id: str | None = None, dataset_fingerprint: str | None = None, name: str = "pca") -> ConceptSet:
    """Top-``k`` principal components per site of one model's activations.

    Args:
        source: ActivationStore, ``{site: Tensor[N, d]}`` or ``Tensor[N, d]`` (``sites`` names it).
        k: components per site. Scores are explained-variance ratios.
        center: subtract the mean first (as PCA does).
        drop_dims: coordinates zeroed before the decomposition (``[507]`` for SmolLM2's massive
            dimension); the ratios are then of the remaining variance.
        method: ``"auto"``, ``"full"`` (exact) or ``"lowrank"`` (``torch.svd_lowrank``).
    """
    f = as_features(source, sites, model_id=model_id, dataset_fingerprint=dataset_fingerprint)
    out = ConceptSet()
    for site, x in f.x.items():
        comps, var, total = principal_components(_masked(x, drop_dims), k, center=center, method=method,
                                                 niter=niter, seed=seed)
        prov = provenance("pca", f.model_id, f.dataset_fingerprint, dict(
            k=k, center=center, method=method, drop_dims=list(drop_dims or []), position=f.position,
            n_rows=x.shape[0]))
        _concepts(out, site, comps, var, total, prov, name, drop_dims)
    return out


# ----------------------------------------------------------------------------- two models
def paired_activations(ft: Workbench, base: Workbench, prompts: Sequence[str], sites: Sequence[str] | str,
                       responses: Sequence[str] | None = None, position: str = "response",
                       batch_size: int = 8, progress: bool = False
                       ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Activations of two :class:`~workbench.Workbench` models on the same tokens.

    Returns ``(acts_ft, acts_base, record_index)``: ``{site: [rows, d]}`` each, row ``i`` of both
    being the same token. ``position="response"`` (the default, as CAFT) needs ``responses``."""
    sites = [sites] if isinstance(sites, str) else list(sites)
    if position in ("response", "response_mean") and responses is None:
        raise ValueError(f"position={position!r} needs responses (the assistant turns to read)")
    a = ft.capture(prompts, sites, position=position, responses=responses, batch_size=batch_size, progress=progress)
    b = base.capture(prompts, sites, position=position, responses=responses, batch_size=batch_size, progress=progress)
    if not torch.equal(a.record_index, b.record_index):
        raise ValueError("the two models tokenized the data differently (row counts differ); "
                         "they need the same tokenizer and chat template")
    return {s: a[s].flatten(1) if s.endswith("hook_z") else a[s] for s in sites}, \
           {s: b[s].flatten(1) if s.endswith("hook_z") else b[s] for s in sites}, a.record_index


def activation_difference(ft: Workbench, base: Workbench, sites: Sequence[str] | str | None = None, prompts=None, responses=None,
                          position: str = "response", batch_size: int = 8, progress: bool = False
                          ) -> tuple[dict[str, torch.Tensor], dict]:
    """``{site: acts_ft - acts_base}`` ``[rows, d]`` and provenance info.

    ``ft`` / ``base``: two Workbench objects (then ``prompts`` / ``responses`` are captured), two
    ActivationStores of the same capture (same dataset fingerprint and rows), or two
    ``{site: tensor}`` mappings of equal shapes."""
    from ..model import Workbench

    if isinstance(ft, Workbench):
        if prompts is None:
            raise ValueError("two models need prompts (and responses) to run on")
        if sites is None:
            raise ValueError("name the sites to compare")
        a, b, _ = paired_activations(ft, base, prompts, sites, responses, position, batch_size, progress)
        from ..activations import fingerprint

        fp = fingerprint(prompts, responses, [str(i) for i in range(len(prompts))], [None] * len(prompts))
        info = {"model_id": ft.model_id, "base_model_id": base.model_id, "dataset_fingerprint": fp,
                "position": position}
        return {s: a[s] - b[s] for s in a}, info
    fa, fb = as_features(ft, sites), as_features(base, sites)
    if fa.dataset_fingerprint and fb.dataset_fingerprint and fa.dataset_fingerprint != fb.dataset_fingerprint:
        raise ValueError("the two activation stores hold different datasets (fingerprints differ)")
    if fa.record_index is not None and fb.record_index is not None and not torch.equal(fa.record_index, fb.record_index):
        raise ValueError("the two activation stores hold different rows (record_index differs)")
    out = {}
    for s in fa.x:
        if fa.x[s].shape != fb.x[s].shape:
            raise ValueError(f"site {s!r}: shapes {tuple(fa.x[s].shape)} and {tuple(fb.x[s].shape)} differ")
        out[s] = fa.x[s] - fb.x[s]
    info = {"model_id": fa.model_id, "base_model_id": fb.model_id, "dataset_fingerprint": fa.dataset_fingerprint,
            "position": fa.position}
    return out, info


def pca_diff(ft: Workbench, base: Workbench, prompts: Sequence[str] | None = None, responses: Sequence[str] | None = None,
             sites: Sequence[str] | str | None = None, k: int = 20, *, center: bool = True,
             position: str = "response", method: str = "lowrank", niter: int = 4, oversample: int = 10,
             seed: int = 0, drop_dims: Sequence[int] | None = None, batch_size: int = 8,
             progress: bool = False, name: str = "pca_diff") -> ConceptSet:
    """CAFT's PCA directions: top-``k`` principal components of ``acts_ft - acts_base`` on the same
    tokens (response tokens by default), centred, via ``torch.svd_lowrank``.

    ``ft`` / ``base``: see :func:`activation_difference`. For a test, ``ft`` can be a copy of a
    model with perturbed weights. Scores are the fraction of the difference's variance explained.
    """
    diffs, info = activation_difference(ft, base, sites, prompts, responses, position, batch_size, progress)
    out = ConceptSet()
    for site, d in diffs.items():
        comps, var, total = principal_components(_masked(d, drop_dims), k, center=center, method=method,
                                                 niter=niter, oversample=oversample, seed=seed)
        prov = provenance("pca_diff", info["model_id"], info["dataset_fingerprint"], dict(
            base_model_id=info["base_model_id"], k=k, center=center, method=method, niter=niter,
            position=info["position"], drop_dims=list(drop_dims or []), n_tokens=d.shape[0],
            mean_diff_norm=float(d.double().mean(0).norm())))
        _concepts(out, site, comps, var, total, prov, name, drop_dims)
    return out


def random_directions(site: str, d: int, k: int = 20, seed: int = 0, model_id: str | None = None) -> ConceptSet:
    """CAFT's random baseline: ``k`` random orthonormal directions at ``site``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    prov = provenance("random", model_id, None, {"k": k, "seed": seed})
    return ConceptSet(Concept(f"random/{site}/{i}", site, q[:, i], "", None, provenance=prov) for i in range(k))


def top_components(source, sites, k: int = 20, **kwargs) -> ConceptSet:
    """CAFT's "top PCs" baseline: the top principal components of the (fine-tuned) model's own
    activations (same as :func:`pca`)."""
    return pca(source, sites, k, name="top_pcs", **kwargs)


__all__ = ["pca", "pca_diff", "principal_components", "paired_activations", "activation_difference",
           "random_directions", "top_components"]
