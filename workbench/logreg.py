"""Batched L2 logistic regression: many independent probes fitted at once by damped Newton, and
the sklearn-identical z-scoring they are fitted on. :mod:`workbench.probes` drives it per site
group and fold; see its docstring for when it beats the sklearn loop.
"""

from __future__ import annotations

import warnings

import torch


def fit_logreg_batched(
    X: torch.Tensor, y: torch.Tensor, l2: float = 1.0, tol: float = 1e-5, max_iter: int = 50,
    hessian_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit S independent L2 logistic regressions at once by damped Newton.

    X: ``[S, n, d]`` (already standardized), y: ``[n]`` 0/1. Minimizes, per site,
    ``sum_i logloss_i + 0.5 * l2 * ||w||^2`` with an unpenalized intercept -- the optimum of
    sklearn's ``LogisticRegression(C=1/l2)``. Each iteration builds the exact Hessian
    ``[S, d+1, d+1]`` with one batched matmul, solves by Cholesky and backtracks per site
    (Armijo). A site stops after a step whose Newton decrement ``-g.step`` is below
    ``tol * n`` (quadratic convergence: the step it takes lands far closer). Converged sites
    drop out of the batch. Returns ``(w [S, d], b [S])`` in X's dtype and device.

    ``hessian_dtype`` (e.g. ``torch.bfloat16``, where matrix units make it several times faster:
    :func:`workbench._hardware.fast_bf16`) builds the Hessian in that precision; the step is then
    refined once against the exact Hessian (two matrix-vector products in X's dtype), so that the
    gradient, the loss, the line search and the optimum stay those of X's dtype.
    """
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0 (the problem has no optimum on separable data), got {l2}")
    (S, n, d), dt, dev = X.shape, X.dtype, X.device
    y = y.to(dtype=dt, device=dev)
    Xa = torch.cat([X, torch.ones(S, n, 1, dtype=dt, device=dev)], 2)  # [S, n, d+1]: intercept column
    reg = torch.full((d + 1,), float(l2), dtype=dt, device=dev)
    reg[d] = 1e-6  # intercept unpenalized (tiny ridge on the Hessian only, for the Cholesky)
    theta, out = torch.zeros(S, d + 1, dtype=dt, device=dev), torch.zeros(S, d + 1, dtype=dt, device=dev)
    slack = 1e-6 if dt in (torch.float32, torch.float16, torch.bfloat16) else 1e-12  # Armijo rounding allowance

    def loss(z: torch.Tensor, th: torch.Tensor) -> torch.Tensor:  # z [s, n] logits -> [s]
        return torch.nn.functional.softplus(z).sum(1) - z @ y + 0.5 * l2 * (th[:, :d] ** 2).sum(1)

    hdt = hessian_dtype or dt
    # [S, d+1, n]: the Hessian's copy of the data (in hdt, contiguous: a faster bf16 GEMM); fp32 uses X itself
    XhTa = Xa.transpose(1, 2) if hdt == dt else Xa.transpose(1, 2).to(hdt).contiguous()
    act, Xs, XhT = torch.arange(S, device=dev), Xa, XhTa

    def solve(L: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (L L^T)^-1 b; cholesky_solve copies L each call
        return torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, b[..., None], upper=False),
                                             upper=True)[..., 0]

    z = torch.bmm(Xs, theta[:, :, None])[..., 0]
    f = loss(z, theta)
    for _ in range(max_iter):
        p = torch.sigmoid(z)
        g = torch.bmm((p - y)[:, None, :], Xs)[:, 0]  # [s, d+1]
        g[:, :d] += l2 * theta[:, :d]
        wt = p * (1 - p)
        H = torch.bmm(XhT * wt.to(hdt)[:, None, :], XhT.mT).to(dt)  # [s, d+1, d+1], the costly part
        H.diagonal(dim1=1, dim2=2).add_(reg)
        L, info = torch.linalg.cholesky_ex(H)
        if bool((info != 0).any()):  # numerically indefinite in low precision: solve in float64
            step = -torch.linalg.solve(H.double(), g.double()[..., None])[..., 0].to(dt)
        else:
            step = -solve(L, g)
            if hdt != dt:  # one refinement: step += H_low^-1 (-g - H step), H step exact in dt
                Hstep = torch.bmm((wt * torch.bmm(Xs, step[:, :, None])[..., 0])[:, None, :], Xs)[:, 0] + reg * step
                step = step + solve(L, -g - Hstep)
        slope = (g * step).sum(1)  # directional derivative (< 0)
        done = -slope < tol * n
        zd = torch.bmm(Xs, step[:, :, None])[..., 0]  # logits are linear in the step: no data pass per trial
        t = torch.ones(len(act), dtype=dt, device=dev)
        ok = torch.ones(len(act), dtype=torch.bool, device=dev)  # (set by the first trial: the loop always runs)
        for _ in range(40):  # Armijo backtracking, per site
            ok = loss(z + t[:, None] * zd, theta + t[:, None] * step) <= f + 1e-4 * t * slope + slack * f.abs()
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
        t = torch.where(ok, t, torch.zeros_like(t))  # no decrease found (at rounding level): stay
        done |= ~ok
        theta, z = theta + t[:, None] * step, z + t[:, None] * zd
        f = loss(z, theta)
        if bool(done.any()):
            out[act[done]] = theta[done]
            keep = ~done
            if not bool(keep.any()):
                break
            act, theta, z, f = act[keep], theta[keep], z[keep], f[keep]
            Xs = Xa[act]
            XhT = Xs.mT if hdt == dt else XhTa[act]  # fp32: a view of Xs, not a second copy
    else:
        out[act] = theta
        warnings.warn(f"fit_logreg_batched: {len(act)} of {S} probes not converged after {max_iter} Newton steps", stacklevel=2)
    return out[:, :d], out[:, d]


def standardizer(Xtr: torch.Tensor, dtype: torch.dtype):
    """z-scoring fitted on ``Xtr [S, n, d]`` like sklearn's StandardScaler (ddof=0; a feature
    whose variance is within float64 rounding of 0 gets std 1). Returns ``f(x [S, m, d])``
    -> standardized x in ``dtype``. Two-pass centering keeps near-constant features exact in
    their own precision: ``x - mean`` is exact when x and mean are close (Sterbenz)."""
    n = Xtr.shape[1]
    m1 = Xtr.mean(1, keepdim=True)
    m2 = (Xtr - m1).mean(1, keepdim=True)  # rounding error of the first mean
    c = Xtr - m1 - m2
    var = (c * c).mean(1, keepdim=True).double()
    eps, mu = torch.finfo(torch.float64).eps, m1.double() + m2.double()
    constant = var <= n * eps * var + (n * mu * eps) ** 2  # sklearn's _is_constant_feature
    sd = torch.where(constant, torch.ones_like(var), var.sqrt()).to(Xtr.dtype)
    return lambda x: ((x.to(Xtr.dtype) - m1 - m2) / sd).to(dtype)
