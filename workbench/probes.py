"""Linear-separability probes over many sites at once.

``features`` is always ``dict[site, Tensor[N, d]]`` and ``labels`` a ``Tensor[N]`` of 0/1
(1 = harmful / concept present). Site names follow TransformerLens hooks, e.g.
``blocks.12.hook_resid_post`` ``[N, 576]`` or one attention head ``blocks.12.attn.hook_z[3]``
``[N, 64]`` (see :func:`split_heads`).

Every probe standardizes features with training-fold statistics (the residual stream has a
massive-activation dimension) and fits L2-regularized logistic regression, minimizing
``sum(logloss) + 0.5 * l2 * ||w||^2`` (intercept unpenalized) -- sklearn's objective with
``C = 1 / l2``. ``method="sklearn"`` is the per-site reference loop; ``method="torch"`` fits
sites of the same width in batched damped-Newton solves, in cache-sized batches
(:data:`BATCH_BYTES`; same optimum; the solver is :mod:`workbench.logreg`), each batch's data
prepared once for all folds (z-scored once, each fold's own statistics as a per-feature penalty:
:func:`workbench.logreg.standardize_folds`). On a 2-core CPU the
batched solve wins most for many narrow sites (heads, d=64) and less for wide ones (d=576, n=800:
each fit needs a few exact Hessians and their Cholesky factors; the other Newton steps run
conjugate gradients preconditioned by the last factor); where bf16 GEMMs are fast (AMX) the
Hessians are built in bf16 (:data:`BF16_HESSIANS`), and on a CPU two solves run at once
(:data:`SOLVE_WORKERS`). Nothing in it is CPU-specific (``device=``). See bench/probe_sweep.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar, overload

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ._allocator import keep_freed_memory
from ._hardware import fast_bf16
from .logreg import fit_logreg_batched, standardize, standardize_folds
from .sites import is_head_site, split_site
from .stats import score_metrics

T = TypeVar("T")
RESID_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
# BLAS threads for the sklearn reference. Its per-site problems are small; with 2 threads on
# a busy 2-core machine OpenBLAS was 10-30x slower than with 1. None = the library default.
SKLEARN_BLAS_THREADS: int | None = 1
# the torch solver's Hessians in bf16 (the step refined against the exact fp32 Hessian): None = where
# bf16 GEMMs are fast (workbench._hardware.fast_bf16: AMX CPUs, CUDA); True / False force it
BF16_HESSIANS: bool | None = None
BF16_MIN_WIDTH = 256  # narrower sites (heads, d=64) gain nothing from bf16 Hessians (bench/probe_sweep.py)
# sites per batched solve: a batch's float32 data about this size. Every Newton step makes several
# passes over the batch; cache-sized batches beat one batch of every site of a width (2 cores,
# N=1000: residual sites 2.53 -> 1.95 s at 4-8 per batch, heads 1.14 -> 1.01 s at 64; bench/probe_sweep.py)
BATCH_BYTES = 12 * 2**20
# independent solves (a batch of sites on one fold) run in this many Python threads on a CPU, each
# with torch's threads divided among them: the solver's many small operations (triangular solves,
# elementwise passes) use one core poorly, so two solves at once beat one solve on two cores
# (bench/probe_sweep.py). 1 = one solve at a time.
SOLVE_WORKERS = 2


# ----------------------------------------------------------------------------- site names
def _site_meta(name: str) -> tuple[str, float, float]:
    """(kind, layer, head) for a result row; unparseable names get kind=name and NaN layer/head."""
    try:
        kind, layer, head = split_site(name)
    except ValueError:
        return name, np.nan, np.nan
    return kind, layer, np.nan if head is None else head


def split_heads(features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every ``[N, H, dh]`` entry ``blocks.{l}.attn.hook_z`` by H entries
    ``blocks.{l}.attn.hook_z[h]`` of shape ``[N, dh]``; other entries pass through."""
    out: dict[str, torch.Tensor] = {}
    for name, x in features.items():
        if x.dim() == 3 and is_head_site(name) and "[" not in name:
            for h in range(x.shape[1]):
                out[f"{name}[{h}]"] = x[:, h]
        else:
            out[name] = x
    return out


# ----------------------------------------------------------------------------- validation
def _check(features: Mapping[str, torch.Tensor], labels, n_folds: int | None = None) -> tuple[list[str], np.ndarray]:
    """Validate inputs; return (site names, labels as int64 numpy [N])."""
    if not isinstance(features, Mapping) or len(features) == 0:
        raise ValueError("features is empty: pass a dict site -> Tensor[N, d]")
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D [N], got shape {tuple(y.shape)}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if y.size == 0 or not np.isin(y, (0, 1)).all():
        bad = sorted(set(np.unique(y).tolist()) - {0, 1})[:5]
        raise ValueError(f"labels must be 0/1 (1 = concept present); found other values {bad}")
    y = y.astype(np.int64)
    counts = np.bincount(y, minlength=2)
    if (counts == 0).any():
        raise ValueError(f"labels contain only one class (counts 0:{counts[0]}, 1:{counts[1]}); need both")
    if n_folds is not None and n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if n_folds is not None and counts.min() < n_folds:
        raise ValueError(f"class {int(counts.argmin())} has {counts.min()} examples, fewer than n_folds={n_folds}")
    for name, x in features.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"site {name!r}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            hint = " (per-head [N, H, dh] site? use split_heads(features))" if x.dim() == 3 else ""
            raise ValueError(f"site {name!r}: expected shape [N, d], got {tuple(x.shape)}{hint}")
        if x.shape[0] != len(y):
            raise ValueError(f"site {name!r} has N={x.shape[0]} rows but labels has N={len(y)}")
        if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():  # (a sum overflows only rarely)
            raise ValueError(f"site {name!r} contains NaN or inf values")
    return list(features), y


def make_folds(labels, n_folds: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified shuffled k-fold ``(train_idx, test_idx)`` pairs, shared by every site and method."""
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(skf.split(np.zeros((len(y), 1)), y))


def _fold_index(folds: Sequence[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """``[N]`` index of the fold in which each example is held out."""
    fold_of = np.empty(n, dtype=np.int64)
    for f, (_, te) in enumerate(folds):
        fold_of[te] = f
    return fold_of


def _hessian_dtype(X: torch.Tensor, dtype: torch.dtype) -> torch.dtype | None:
    """bf16 for the Hessians per :data:`BF16_HESSIANS` of float32 sites at least :data:`BF16_MIN_WIDTH` wide."""
    bf16 = fast_bf16(X.device) if BF16_HESSIANS is None else BF16_HESSIANS
    return torch.bfloat16 if bf16 and dtype == torch.float32 and X.shape[2] >= BF16_MIN_WIDTH else None


def _torch_scores(Xtr: torch.Tensor, ytr, Xevals: Sequence[torch.Tensor], l2: float,
                  dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Standardize with train stats, fit all ``[S, n, d]`` probes in ``dtype`` (Hessians per
    :func:`_hessian_dtype`), return logits ``[S, m]`` per eval set."""
    keep_freed_memory()  # the solves allocate and free the same large blocks: no page faults each time
    ztr, z = standardize(Xtr, dtype, intercept_column=True)
    w, b = fit_logreg_batched(ztr, torch.as_tensor(ytr), l2=l2, hessian_dtype=_hessian_dtype(Xtr, dtype),
                              intercept_column=True)
    return [torch.bmm(z(xe), w[:, :, None])[..., 0] + b[:, None] for xe in Xevals]


def _torch_cv_scores(features: Mapping[str, torch.Tensor], names: Sequence[str], y: np.ndarray,
                     folds: Sequence[tuple[np.ndarray, np.ndarray]], l2: float, dtype: torch.dtype,
                     device: str | torch.device) -> torch.Tensor:
    """Out-of-fold logits ``[S, N]`` of the probes of ``features``' sites ``names`` on ``folds``, each fold
    standardized with its training statistics like :func:`_torch_scores`, but the data prepared once
    for all folds: rows gathered in fold order, z-scored once (:func:`standardize_folds`: each
    fold's own statistics become a per-feature penalty), transposed once, and every fold's first
    Hessian (``X^T X / 4``) summed from per-fold Gram matrices; a fold's training rows are then
    two slabs (copied into one, faster than solving on views)."""
    keep_freed_memory()
    order = torch.as_tensor(np.concatenate([te for _, te in folds]), device=device)
    sizes = [len(te) for _, te in folds]
    bounds = np.cumsum([0, *sizes]).tolist()
    X = _stack(features, names, device, rows=order)  # [S, N, d], rows sorted by fold
    hdt = _hessian_dtype(X, dtype)
    Z, scale = standardize_folds(X, sizes, dtype)  # [S, N, d+1], [K, S, d]
    del X
    ZT = Z.transpose(1, 2).contiguous()  # [S, d+1, N]
    ZhT = ZT if hdt is None else ZT.to(hdt)
    blocks = (ZhT[..., a:b].contiguous() for a, b in zip(bounds, bounds[1:]))  # (a GEMM on a view: slower)
    grams = torch.stack([torch.bmm(blk, blk.mT).to(dtype) for blk in blocks])  # [K, S, d+1, d+1]
    total = grams.sum(0)
    ys = torch.as_tensor(y, device=device)[order]
    out = torch.empty(len(names), len(y), dtype=dtype, device=device)  # examples in the features' order

    def outside(t: torch.Tensor, dim: int, a: int, b: int) -> torch.Tensor:  # t without [a, b) along dim
        return torch.cat([t.narrow(dim, 0, a), t.narrow(dim, b, t.shape[dim] - b)], dim)

    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        w, b0 = fit_logreg_batched(
            outside(Z, 1, a, b), outside(ys, 0, a, b), l2=l2 * scale[k] ** 2, hessian_dtype=hdt,
            intercept_column=True, gram=total - grams[k], XT=outside(ZT, 2, a, b),
            XhT=None if hdt is None else outside(ZhT, 2, a, b))
        out.index_copy_(1, order[a:b], torch.baddbmm(b0[:, None, None], w[:, None, :], ZT[:, :-1, a:b])[:, 0])
    return out


def _groups(names: Sequence[str], features: Mapping[str, torch.Tensor]) -> list[list[int]]:
    """Site indices of equal feature width, in batches whose float32 data is about
    :data:`BATCH_BYTES` (each batch is fitted as one solve)."""
    by_width: dict[int, list[int]] = {}
    for i, s in enumerate(names):
        by_width.setdefault(features[s].shape[1], []).append(i)
    batches = []
    for width, idx in by_width.items():
        size = max(1, BATCH_BYTES // (4 * (width + 1) * features[names[idx[0]]].shape[0]))
        batches += [idx[lo:lo + size] for lo in range(0, len(idx), size)]
    return batches


def _solve_all(jobs: Sequence[Callable[[], T]], device) -> list[T]:
    """Run independent solves, :data:`SOLVE_WORKERS` at a time on a CPU (torch's threads divided
    among them, restored afterwards), one at a time elsewhere; results in ``jobs``' order."""
    workers = min(SOLVE_WORKERS, len(jobs), torch.get_num_threads())
    if workers < 2 or torch.device(device).type != "cpu":
        return [job() for job in jobs]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // workers))
    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda job: job(), jobs))
    finally:
        torch.set_num_threads(threads)


def _stack(features: Mapping[str, torch.Tensor], names: Sequence[str], device,
           rows: torch.Tensor | None = None) -> torch.Tensor:
    """``[S, N, d]`` in the sites' own precision (at least float32): standardization needs it.
    ``rows``: only these rows, in this order (one copy)."""
    dt = torch.float32
    for s in names:
        dt = torch.promote_types(dt, features[s].dtype)
    if rows is None:
        return torch.stack([features[s].detach().to(device=device, dtype=dt) for s in names])
    first = features[names[0]]
    out = torch.empty(len(names), len(rows), first.shape[1], dtype=dt, device=device)
    for i, s in enumerate(names):
        x = features[s].detach().to(device=device)
        if x.dtype == dt:
            torch.index_select(x, 0, rows.to(x.device), out=out[i])
        else:
            out[i] = x.index_select(0, rows.to(x.device))
    return out


def fit_predict(
    train: Mapping[str, torch.Tensor], y_train, evals: Sequence[Mapping[str, torch.Tensor]], method: str = "torch",
    l2: float = 1.0, max_iter: int = 1000, dtype: torch.dtype = torch.float32, device: str | torch.device | None = None,
) -> list[np.ndarray]:
    """Fit one standardized probe per site on ``train`` (site -> ``[n, d]``) and return logits
    on each eval set (same sites): a list with one ``[S, m]`` array per eval set, rows in
    ``train``'s order. ``max_iter`` applies to sklearn; torch uses ``dtype`` on ``device``
    (default: the features' device)."""
    names = list(train)
    y_train = np.asarray(y_train)
    outs = [np.empty((len(names), next(iter(ev.values())).shape[0])) for ev in evals]
    if method == "sklearn":
        with threadpool_limits(limits=SKLEARN_BLAS_THREADS, user_api="blas"):
            for i, s in enumerate(names):  # the reference: one pipeline per site
                clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0 / l2, max_iter=max_iter, tol=1e-6))
                clf.fit(train[s].double().cpu().numpy(), y_train)
                for out, ev in zip(outs, evals):
                    out[i] = clf.decision_function(ev[s].double().cpu().numpy())
        return outs
    if method != "torch":
        raise ValueError(f"method must be 'torch' or 'sklearn', got {method!r}")
    device = device or train[names[0]].device
    groups = _groups(names, train)

    def solve(sub: list[str]) -> Callable[[], list[torch.Tensor]]:
        return lambda: _torch_scores(_stack(train, sub, device), y_train, [_stack(ev, sub, device) for ev in evals],
                                     l2, dtype)

    for idx, res in zip(groups, _solve_all([solve([names[i] for i in idx]) for idx in groups], device)):
        for out, r in zip(outs, res):
            out[idx] = r.double().cpu().numpy()
    return outs


def _frame(names: list[str], widths: list[int], metrics: pd.DataFrame) -> pd.DataFrame:
    meta = pd.DataFrame([(s, *_site_meta(s)) for s in names], columns=["site", "kind", "layer", "head"])
    meta = meta.astype({"layer": "Int64", "head": "Int64"})
    meta.insert(4, "d", widths)
    return pd.concat([meta, metrics.reset_index(drop=True)], axis=1)


# ----------------------------------------------------------------------------- sweeps
@overload
def probe_sweep(
    features: Mapping[str, torch.Tensor], labels, n_folds: int = 5, seed: int = 0, method: str = "torch",
    l2: float = 1.0, n_boot: int = 200, max_iter: int = 1000, dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None, return_scores: Literal[False] = False,
) -> pd.DataFrame: ...
@overload
def probe_sweep(
    features: Mapping[str, torch.Tensor], labels, n_folds: int = 5, seed: int = 0, method: str = "torch",
    l2: float = 1.0, n_boot: int = 200, max_iter: int = 1000, dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None, *, return_scores: Literal[True],
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]: ...
@overload
def probe_sweep(
    features: Mapping[str, torch.Tensor], labels, n_folds: int = 5, seed: int = 0, method: str = "torch",
    l2: float = 1.0, n_boot: int = 200, max_iter: int = 1000, dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None, return_scores: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, np.ndarray]]: ...
def probe_sweep(
    features: Mapping[str, torch.Tensor], labels, n_folds: int = 5, seed: int = 0, method: str = "torch",
    l2: float = 1.0, n_boot: int = 200, max_iter: int = 1000, dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None, return_scores: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Cross-validated linear probe per site.

    features: site -> ``[N, d]``; labels ``[N]`` 0/1. Folds: ``make_folds(labels, n_folds, seed)``,
    identical for every site and both methods. Each fold standardizes with its training
    statistics and fits ``LogisticRegression(C=1/l2)`` (``method="sklearn"``, the reference)
    or the batched Newton solver (``method="torch"``: standardization in float64 like sklearn,
    the solve in ``dtype`` on ``device``, default the features' device). Accuracy (threshold 0)
    and AUROC use the out-of-fold logits pooled over folds.

    Returns a DataFrame, one row per site: site, kind, layer, head, d, n, accuracy,
    accuracy_ci_low/high (Wilson 95%), auroc, auroc_ci_low/high (bootstrap 95%, ``n_boot``
    resamples seeded by ``seed``), accuracy_fold_std. With ``return_scores=True`` returns
    ``(df, {"scores": [S, N] logits, "fold": [N] fold index})``.
    """
    names, y = _check(features, labels, n_folds)
    folds = make_folds(y, n_folds, seed)
    scores, fold_of = np.empty((len(names), len(y))), _fold_index(folds, len(y))
    if method == "torch":
        device = device or features[names[0]].device
        groups = _groups(names, features)

        def solve(idx: list[int]) -> Callable[[], torch.Tensor]:
            return lambda: _torch_cv_scores(features, [names[i] for i in idx], y, folds, l2, dtype, device)

        for idx, sc in zip(groups, _solve_all([solve(idx) for idx in groups], device)):
            scores[idx] = sc.double().cpu().numpy()
    elif method == "sklearn":
        for tr, te in folds:
            (sc,) = fit_predict(
                {s: features[s][torch.as_tensor(tr)] for s in names}, y[tr],
                [{s: features[s][torch.as_tensor(te)] for s in names}], method="sklearn", l2=l2, max_iter=max_iter,
            )
            scores[:, te] = sc
    else:
        raise ValueError(f"method must be 'torch' or 'sklearn', got {method!r}")
    df = _frame(names, [features[s].shape[1] for s in names], score_metrics(scores, y, fold_of, n_boot, seed))
    return (df, {"scores": scores, "fold": fold_of}) if return_scores else df


def probe_transfer(
    train_features: Mapping[str, torch.Tensor], train_labels, test_features: Mapping[str, torch.Tensor], test_labels,
    method: str = "torch", l2: float = 1.0, n_boot: int = 200, seed: int = 0,
) -> pd.DataFrame:
    """Fit a probe per site on one set (e.g. plain harmful vs benign) and score another
    (e.g. jailbreak-wrapped harmful + benign). Both sets need the same sites and widths."""
    names, ytr = _check(train_features, train_labels)
    _, yte = _check(test_features, test_labels)
    missing = set(names) ^ set(test_features)
    if missing:
        raise ValueError(f"train and test features must have the same sites; differing: {sorted(missing)[:5]}")
    for s in names:
        if train_features[s].shape[1] != test_features[s].shape[1]:
            raise ValueError(f"site {s!r}: width {train_features[s].shape[1]} vs {test_features[s].shape[1]}")
    (sc,) = fit_predict(train_features, ytr, [{s: test_features[s] for s in names}], method=method, l2=l2)
    return _frame(names, [train_features[s].shape[1] for s in names], score_metrics(sc, yte, None, n_boot, seed))


def lexical_baseline(prompts: Sequence[str], labels, n_folds: int = 5, seed: int = 0, l2: float = 1.0,
                     n_boot: int = 200) -> dict:
    """What the words alone give: a bag-of-words (unigram + bigram counts) logistic regression on
    the prompts, cross-validated with the probes' own folds (:func:`make_folds`). A probe at a
    site is evidence about the model's computation only where it beats this line.

    Returns ``{"site": "lexical (bag of words)", "accuracy", "accuracy_ci_low/high", "auroc", ...,
    "n"}`` (the columns of a :func:`probe_sweep` row)."""
    from sklearn.feature_extraction.text import CountVectorizer

    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if len(prompts) != len(y):
        raise ValueError(f"{len(prompts)} prompts but {len(y)} labels")
    folds = make_folds(y, n_folds, seed)
    scores = np.empty((1, len(y)))
    for tr, te in folds:
        vec = CountVectorizer(ngram_range=(1, 2), lowercase=True)
        Xtr = vec.fit_transform([prompts[i] for i in tr])
        clf = LogisticRegression(C=1.0 / l2, max_iter=2000).fit(Xtr, y[tr])
        scores[0, te] = clf.decision_function(vec.transform([prompts[i] for i in te]))
    row = score_metrics(scores, y, _fold_index(folds, len(y)), n_boot, seed).iloc[0].to_dict()
    return {"site": "lexical (bag of words)", **{k: (int(v) if k == "n" else float(v)) for k, v in row.items()}}


def diff_means_separation(features: Mapping[str, torch.Tensor], labels, n_folds: int = 5, seed: int = 0,
                          n_boot: int = 200) -> pd.DataFrame:
    """Out-of-fold separability along the train-fold diff-of-means direction (no standardization).

    Score = projection onto the direction minus the midpoint of the projected train class means;
    score > 0 predicts class 1. Same folds and columns as :func:`probe_sweep`."""
    names, y = _check(features, labels, n_folds)
    folds = make_folds(y, n_folds, seed)
    scores, fold_of = np.empty((len(names), len(y))), _fold_index(folds, len(y))
    for i, s in enumerate(names):
        x = features[s].detach().double().cpu()
        for tr, te in folds:
            xtr, m = x[torch.as_tensor(tr)], torch.as_tensor(y[tr] == 1)
            mu1, mu0 = xtr[m].mean(0), xtr[~m].mean(0)
            u = (mu1 - mu0) / (mu1 - mu0).norm().clamp_min(1e-30)
            scores[i, te] = (x[torch.as_tensor(te)] @ u - 0.5 * (mu1 + mu0) @ u).numpy()
    return _frame(names, [features[s].shape[1] for s in names], score_metrics(scores, y, fold_of, n_boot, seed))


# ----------------------------------------------------------------------------- dimensions
def massive_dimensions(features: Mapping[str, torch.Tensor], top: int = 1) -> pd.DataFrame:
    """The ``top`` highest-variance dimensions per site: columns site, rank, dim, var_fraction."""
    rows = []
    for s, x in features.items():
        if x.dim() != 2:
            raise ValueError(f"site {s!r}: expected [N, d], got {tuple(x.shape)}")
        var = x.detach().double().var(0, correction=0)
        frac = var / var.sum().clamp_min(1e-300)
        vals, dims = frac.topk(min(top, len(frac)))
        rows += [(s, r, int(d), float(v)) for r, (v, d) in enumerate(zip(vals, dims))]
    return pd.DataFrame(rows, columns=["site", "rank", "dim", "var_fraction"])


def drop_dimensions(
    features: Mapping[str, torch.Tensor], dims: Sequence[int] | Mapping[str, Sequence[int]] | pd.DataFrame
) -> dict[str, torch.Tensor]:
    """Copy of ``features`` with the given feature dims removed (``[N, d] -> [N, d - k]``).

    ``dims``: a list applied to every residual-width site (kinds resid_*/attn_out/mlp_out and
    unparseable names; per-head sites pass through), a mapping site -> dims, or the DataFrame
    from :func:`massive_dimensions`.
    """
    if isinstance(dims, pd.DataFrame):
        dims = dims.groupby("site")["dim"].apply(list).to_dict()
    out = {}
    for s, x in features.items():
        if isinstance(dims, Mapping):
            drop = list(dims.get(s, []))
        else:
            kind = _site_meta(s)[0]
            drop = list(dims) if (kind in RESID_KINDS or kind == s) else []
        if drop:
            d = x.shape[-1]
            if any(not -d <= i < d for i in drop):
                raise ValueError(f"site {s!r}: dims {drop} out of range for width {d}")
            keep = torch.ones(d, dtype=torch.bool)
            keep[torch.as_tensor(drop)] = False
            x = x[..., keep]
        out[s] = x.clone()
    return out
