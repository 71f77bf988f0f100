"""workbench.logreg: the batched solver lands on sklearn's optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from workbench.logreg import fit_logreg_batched


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
