"""workbench.logreg: the batched solver lands on sklearn's optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from workbench.logreg import cholesky_lower, fit_logreg_batched, standardize, standardize_folds


def test_solver_reaches_sklearn_optimum():
    """Coefficients and the unpenalized intercept equal sklearn's (imbalanced labels, 3 sites)."""
    g = torch.Generator().manual_seed(3)
    n, d = 300, 10
    y = (torch.rand(n, generator=g) < 0.25).long()
    X = torch.randn(3, n, d, generator=g, dtype=torch.float64) + y[None, :, None] * torch.tensor([0.2, 0.6, 1.5])[:, None, None]
    for l2 in (0.3, 3.0):
        w, b = fit_logreg_batched(X, y, l2=l2, tol=1e-10)
        for s in range(3):
            ref = LogisticRegression(C=1 / l2, tol=1e-10, max_iter=10_000).fit(X[s].numpy(), y.numpy())
            np.testing.assert_allclose(w[s].numpy(), ref.coef_[0], atol=1e-5)
            np.testing.assert_allclose(float(b[s]), ref.intercept_[0], atol=1e-5)
    with pytest.raises(ValueError, match="l2 must be > 0"):
        fit_logreg_batched(X, y, l2=0.0)


def test_pcg_solves_with_a_stale_preconditioner():
    """_pcg reaches ``rtol`` on SPD systems preconditioned by another matrix's Cholesky factor,
    per row, and tracks the data times its solution; a row that is already solved (b = 0) stays
    finite and exact; too few steps report it."""
    from workbench.logreg import _pcg

    g = torch.Generator().manual_seed(0)
    s, m = 4, 30
    A = torch.randn(s, 60, m, generator=g, dtype=torch.float64)
    H = A.mT @ A + torch.eye(m, dtype=torch.float64)
    stale = H + 3.0 * torch.diag_embed(torch.rand(s, m, generator=g, dtype=torch.float64))
    L = torch.linalg.cholesky(stale)
    b = torch.randn(s, m, generator=g, dtype=torch.float64)
    b[2] = 0.0

    def hvp(v):
        return (H @ v[..., None])[..., 0], (A @ v[..., None])[..., 0]

    def precond(r):
        return torch.cholesky_solve(r[..., None], L)[..., 0]

    x, ax, ok = _pcg(hvp, b, precond, rtol=1e-8, steps=m)
    assert bool(ok.all()) and torch.isfinite(x).all()
    np.testing.assert_allclose(x.numpy(), torch.linalg.solve(H, b[..., None])[..., 0].numpy(), atol=1e-7)
    np.testing.assert_allclose(ax.numpy(), (A @ x[..., None])[..., 0].numpy(), atol=1e-9)  # tracked A x
    assert float(x[2].abs().max()) == 0.0
    _, _, ok1 = _pcg(hvp, b, precond, rtol=1e-8, steps=1)
    assert not bool(ok1[[0, 1, 3]].any())


def test_cg_steps_and_bf16_hessians_keep_the_optimum():
    """With conjugate-gradient steps off (a new Hessian every iteration), on (the default, with its
    forcing term), on with a fixed tolerance, and with bf16 Hessians, the solver lands on the same
    optimum as sklearn on a d ~ n problem."""
    g = torch.Generator().manual_seed(1)
    n, d = 200, 120
    y = (torch.rand(n, generator=g) < 0.5).long()
    X = torch.randn(2, n, d, generator=g) + 0.3 * y[None, :, None]
    ref = [LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(X[s].double().numpy(), y.numpy()) for s in range(2)]
    for kw in ({"cg_steps": 0}, {}, {"forcing": 0.0}, {"hessian_dtype": torch.bfloat16}):
        w, b = fit_logreg_batched(X, y, tol=1e-8, **kw)
        for s in range(2):
            np.testing.assert_allclose(w[s].numpy(), ref[s].coef_[0], atol=2e-4)
            np.testing.assert_allclose(float(b[s]), ref[s].intercept_[0], atol=2e-4)


def test_bf16_hessians_on_more_features_than_examples():
    """d > n with strongly correlated features (as the first layers' residual stream): bf16 rounding
    makes the Hessian indefinite or a poor preconditioner; the solver falls back to the exact
    Hessian and still lands on sklearn's optimum, without a warning (it once stopped 0.27 away)."""
    import warnings

    g = torch.Generator().manual_seed(0)
    n, d, k = 150, 576, 4
    y = (torch.rand(n, generator=g) < 0.5).long()
    X = torch.randn(n, k, generator=g) @ torch.randn(k, d, generator=g) + 0.3 * torch.randn(n, d, generator=g)
    X += 0.5 * y[:, None] * torch.randn(d, generator=g)
    Z, _ = standardize(X[None], torch.float32)
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=100_000).fit(Z[0].double().numpy(), y.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w, b = fit_logreg_batched(Z, y, hessian_dtype=torch.bfloat16)  # the default tolerance
    np.testing.assert_allclose(w[0].numpy(), ref.coef_[0], atol=1e-3)
    np.testing.assert_allclose(float(b[0]), ref.intercept_[0], atol=1e-3)


def test_sites_fitted_together_equal_sites_fitted_alone():
    """Sites that converge at different iterations (signal strength 0 .. 3) leave the batch in
    groups (finished rows ride along frozen until a quarter has finished): each site's solution
    equals the one it gets alone."""
    g = torch.Generator().manual_seed(5)
    n, d, S = 240, 30, 7
    y = (torch.rand(n, generator=g) < 0.5).long()
    strength = torch.linspace(0, 3, S, dtype=torch.float64)
    X = torch.randn(S, n, d, generator=g, dtype=torch.float64)
    X[:, :, 0] += strength[:, None] * (2 * y - 1)
    w, b = fit_logreg_batched(X, y, tol=1e-10)
    for s in range(S):
        w1, b1 = fit_logreg_batched(X[s:s + 1], y, tol=1e-10)
        np.testing.assert_allclose(w[s].numpy(), w1[0].numpy(), atol=1e-6)  # (batch-wide Hessian rebuilds:
        # other preconditioners, the same optimum to the tolerance)
        assert float(b[s]) == pytest.approx(float(b1[0]), abs=1e-6)


def test_cholesky_lower_equals_torch():
    """The in-place LAPACK factorization: the lower triangle equals torch.linalg.cholesky's, the
    triangular solves that read it agree, an indefinite matrix reports info > 0; a non-contiguous
    input takes torch's own path."""
    g = torch.Generator().manual_seed(0)
    for dt in (torch.float32, torch.float64):
        A = torch.randn(3, 80, 40, generator=g, dtype=dt)
        H = A.mT @ A + torch.eye(40, dtype=dt)
        H[1] = -H[1]  # indefinite
        ref, ref_info = torch.linalg.cholesky_ex(H)
        L, info = cholesky_lower(H.clone())
        assert info.tolist()[0] == 0 and info.tolist()[2] == 0 and info.tolist()[1] > 0
        assert (info != 0).tolist() == (ref_info != 0).tolist()
        tol = 1e-5 if dt == torch.float32 else 1e-12
        for i in (0, 2):
            np.testing.assert_allclose(L[i].tril().numpy(), ref[i].numpy(), atol=tol * 10)
            b = torch.randn(40, 1, generator=g, dtype=dt)
            x = torch.linalg.solve_triangular(L[i].mT, torch.linalg.solve_triangular(L[i], b, upper=False), upper=True)
            np.testing.assert_allclose(x.numpy(), torch.cholesky_solve(b, ref[i]).numpy(), rtol=1e-4, atol=tol)
        Lt, info_t = cholesky_lower(H.mT.contiguous().mT)  # column-major strides: torch's path
        assert (info_t != 0).tolist() == (ref_info != 0).tolist()
        np.testing.assert_allclose(Lt[0].numpy(), ref[0].numpy(), atol=tol * 10)


def test_standardize_with_an_intercept_column():
    """``intercept_column=True``: the same z-scores with a column of ones after them, and the
    fit on it equals the fit that adds the column itself."""
    g = torch.Generator().manual_seed(2)
    X = torch.randn(2, 50, 6, generator=g) * torch.tensor([1.0, 100.0, 1e-3, 1.0, 5.0, 1.0]) + 3.0
    X[:, :, 3] = 7.0  # a constant feature: std 1
    Z, f = standardize(X, torch.float32)
    Za, fa = standardize(X, torch.float32, intercept_column=True)
    assert Za.shape == (2, 50, 7) and bool((Za[..., 6] == 1).all())
    np.testing.assert_array_equal(Za[..., :6].numpy(), Z.numpy())
    np.testing.assert_array_equal(fa(X[:, :5]).numpy(), f(X[:, :5]).numpy())
    y = (torch.arange(50) % 3 == 0).long()
    w, b = fit_logreg_batched(Z.double(), y, tol=1e-10)
    wa, ba = fit_logreg_batched(Za.double(), y, tol=1e-10, intercept_column=True)
    np.testing.assert_allclose(wa.numpy(), w.numpy(), atol=1e-10)
    np.testing.assert_allclose(ba.numpy(), b.numpy(), atol=1e-10)


def test_per_feature_penalty_equals_rescaled_features():
    """``l2`` as ``[S, d]``: the penalty ``0.5 * sum(l2_j w_j^2)`` is sklearn's unit penalty on the
    features divided by ``sqrt(l2_j)`` (coefficients scaled back); bad shapes and signs are refused."""
    g = torch.Generator().manual_seed(4)
    n, d = 200, 8
    y = (torch.rand(n, generator=g) < 0.4).long()
    X = torch.randn(2, n, d, generator=g, dtype=torch.float64) + 0.5 * y[None, :, None]
    lam = torch.rand(2, d, generator=g, dtype=torch.float64) * 4 + 0.1
    w, b = fit_logreg_batched(X, y, l2=lam, tol=1e-10)
    for s in range(2):
        ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit((X[s] / lam[s].sqrt()).numpy(), y.numpy())
        np.testing.assert_allclose((w[s] * lam[s].sqrt()).numpy(), ref.coef_[0], atol=1e-5)
        np.testing.assert_allclose(float(b[s]), ref.intercept_[0], atol=1e-5)
    with pytest.raises(ValueError, match=r"\[S, d\]"):
        fit_logreg_batched(X, y, l2=lam[:, :3])
    with pytest.raises(ValueError, match="> 0"):
        fit_logreg_batched(X, y, l2=lam - 10)


def test_gram_and_transposed_data_give_the_same_fit():
    """The first Hessian from a given ``X^T X`` (in bf16 or float32) and the caller's transposed
    copies land where the solver's own land; they need the intercept column."""
    g = torch.Generator().manual_seed(6)
    n, d = 300, 40
    y = (torch.rand(n, generator=g) < 0.5).long()
    X = torch.randn(3, n, d, generator=g) + 0.4 * y[None, :, None]
    Xa = torch.cat([X, torch.ones(3, n, 1)], 2)
    XT = Xa.transpose(1, 2).contiguous()
    w0, b0 = fit_logreg_batched(Xa, y, tol=1e-9, intercept_column=True)
    for hdt in (None, torch.bfloat16):
        XhT = XT if hdt is None else XT.to(hdt)
        w, b = fit_logreg_batched(Xa, y, tol=1e-9, intercept_column=True, hessian_dtype=hdt,
                                  gram=torch.bmm(XhT, XhT.mT), XT=XT, XhT=XhT)
        np.testing.assert_allclose(w.numpy(), w0.numpy(), atol=2e-4)
        np.testing.assert_allclose(b.numpy(), b0.numpy(), atol=2e-4)
    # one exact Newton step from zero (no conjugate gradients to mend a wrong first Hessian) is the same
    with pytest.warns(UserWarning, match="not converged"):
        w1, _ = fit_logreg_batched(Xa, y, max_iter=1, cg_steps=0, intercept_column=True)
    with pytest.warns(UserWarning, match="not converged"):
        w1g, _ = fit_logreg_batched(Xa, y, max_iter=1, cg_steps=0, intercept_column=True, gram=torch.bmm(XT, XT.mT))
    assert float((w1 - w0).abs().max()) > 1e-3  # (one step is not yet the optimum)
    np.testing.assert_allclose(w1g.numpy(), w1.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="intercept_column"):
        fit_logreg_batched(X, y, XT=XT)


def test_standardize_folds_gives_each_folds_sklearn_pipeline():
    """Z-scoring once with all rows' statistics plus a per-fold penalty ``l2 * scale**2`` is each
    fold's own StandardScaler + LogisticRegression: the scales are the folds' stds over the global
    one (sklearn's), the held-out logits the pipeline's decision function -- with a massive
    feature, a tiny-variance one, one constant everywhere and one constant on a fold's training rows."""
    g = torch.Generator().manual_seed(8)
    sizes = [40, 41, 39]
    N, d = sum(sizes), 6
    y = (torch.rand(N, generator=g) < 0.5).long()
    X = torch.randn(2, N, d, generator=g, dtype=torch.float64) + 0.8 * y[None, :, None]
    X[:, :, 1] = 400 + 150 * torch.randn(2, N, generator=g, dtype=torch.float64)
    X[:, :, 2] = 1000 + 3e-4 * (torch.randn(2, N, generator=g, dtype=torch.float64) + (2 * y - 1))
    X[:, :, 3] = 5.0
    X[:, :, 4] = 2.0
    X[:, : sizes[0], 4] = torch.randn(2, sizes[0], generator=g, dtype=torch.float64)  # varies only in fold 0
    Z, scale = standardize_folds(X, sizes, torch.float64)
    assert Z.shape == (2, N, d + 1) and bool((Z[..., d] == 1).all()) and scale.shape == (3, 2, d)
    bounds = np.cumsum([0, *sizes])
    for s in range(2):
        s_all = StandardScaler().fit(X[s].numpy()).scale_
        for k in range(3):
            te = np.arange(bounds[k], bounds[k + 1])
            tr = np.setdiff1d(np.arange(N), te)
            pipe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000))
            pipe.fit(X[s, tr].numpy(), y[tr].numpy())
            np.testing.assert_allclose(scale[k, s].numpy(), pipe[0].scale_ / s_all, rtol=1e-9)
            w, b = fit_logreg_batched(Z[s:s + 1, tr], y[tr], l2=scale[k, s:s + 1] ** 2, tol=1e-12,
                                      intercept_column=True)
            logits = (Z[s, te, :d] @ w[0] + b[0]).numpy()
            np.testing.assert_allclose(logits, pipe.decision_function(X[s, te].numpy()), atol=1e-5)
    with pytest.raises(ValueError, match="sum to N"):
        standardize_folds(X, [40, 40], torch.float64)
