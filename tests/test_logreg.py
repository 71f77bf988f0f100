"""workbench.logreg: the batched solver lands on sklearn's optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from workbench.logreg import fit_logreg_batched, standardize


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
    """With conjugate-gradient steps off (a new Hessian every iteration), on (the default) and with
    bf16 Hessians, the solver lands on the same optimum as sklearn on a d ~ n problem."""
    g = torch.Generator().manual_seed(1)
    n, d = 200, 120
    y = (torch.rand(n, generator=g) < 0.5).long()
    X = torch.randn(2, n, d, generator=g) + 0.3 * y[None, :, None]
    ref = [LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(X[s].double().numpy(), y.numpy()) for s in range(2)]
    for kw in ({"cg_steps": 0}, {}, {"hessian_dtype": torch.bfloat16}):
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
