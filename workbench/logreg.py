"""Batched L2 logistic regression: many independent probes fitted at once by damped Newton, and
the sklearn-identical z-scoring they are fitted on. :mod:`workbench.probes` drives it per site
group and fold; see its docstring for when it beats the sklearn loop.
"""

from __future__ import annotations

import warnings

import torch


def fit_logreg_batched(
    X: torch.Tensor, y: torch.Tensor, l2: float = 1.0, tol: float = 1e-5, max_iter: int = 50,
    hessian_dtype: torch.dtype | None = None, cg_rtol: float = 1e-2, cg_steps: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit S independent L2 logistic regressions at once by damped Newton.

    X: ``[S, n, d]`` (already standardized), y: ``[n]`` 0/1. Minimizes, per site,
    ``sum_i logloss_i + 0.5 * l2 * ||w||^2`` with an unpenalized intercept -- the optimum of
    sklearn's ``LogisticRegression(C=1/l2)``. The first iteration builds the exact Hessian
    ``[S, d+1, d+1]`` with one batched matmul and factors it (Cholesky); later iterations solve
    their Newton system by conjugate gradients on exact Hessian-vector products (two passes over
    the data), preconditioned by the last factor, to ``cg_rtol`` within ``cg_steps`` steps -- and
    build and factor a new Hessian only where that fails (the Hessian changes less and less as
    Newton converges). Each step backtracks per site (Armijo). A site stops after a step whose
    Newton decrement ``-g.step`` is below ``tol * n``. Converged sites drop out of the batch.
    Returns ``(w [S, d], b [S])`` in X's dtype and device.

    ``hessian_dtype`` (e.g. ``torch.bfloat16``, where matrix units make it several times faster:
    :func:`workbench._hardware.fast_bf16`) builds the Hessian in that precision; its factor then
    preconditions the same conjugate gradients on the exact Hessian, so that the gradient, the
    loss, the line search and the optimum stay those of X's dtype.
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
    L: torch.Tensor | None = None  # Cholesky factor of the last Hessian built: the preconditioner
    stuck = 0
    for _ in range(max_iter):
        p = torch.sigmoid(z)
        g = torch.bmm((p - y)[:, None, :], Xs)[:, 0]  # [s, d+1]
        g[:, :d] += l2 * theta[:, :d]
        wt = p * (1 - p)

        def hvp(v: torch.Tensor, Xs=Xs, wt=wt) -> tuple[torch.Tensor, torch.Tensor]:  # (H v [s, d+1], X v [s, n])
            xv = torch.bmm(Xs, v[:, :, None])[..., 0]
            return torch.bmm((wt * xv)[:, None, :], Xs)[:, 0] + reg * v, xv

        step, zd = None, None
        if L is not None:  # the last factor as preconditioner: a few CG steps instead of a new Hessian
            step, zd, ok_cg = _pcg(hvp, -g, lambda r, L=L: solve(L, r), cg_rtol, cg_steps)
            if not bool(ok_cg.all()):
                step = None
        if step is None:  # a new Hessian: in hdt, and exactly where hdt's rounding spoils it
            for hd in dict.fromkeys((hdt, dt)):
                XT = XhT if hd == hdt else Xs.mT  # [s, d+1, n] in hd
                H = torch.bmm(XT * wt.to(hd)[:, None, :], XT.mT).to(dt)  # [s, d+1, d+1], the costly part
                H.diagonal(dim1=1, dim2=2).add_(reg)
                factor, info = torch.linalg.cholesky_ex(H)
                L = None if bool((info != 0).any()) else factor  # indefinite (low precision, d > n): next dtype
                if L is None:
                    continue
                if hd == dt:
                    step, zd = -solve(factor, g), None
                    break
                # the low-precision factor preconditions CG on the exact Hessian
                step, zd, ok_cg = _pcg(hvp, -g, lambda r, L=factor: solve(L, r), cg_rtol, cg_steps)
                if bool(ok_cg.all()):
                    break
                step = None
            if step is None:  # indefinite even in X's dtype: solve the exact Hessian in float64
                step = -torch.linalg.solve(H.double(), g.double()[..., None])[..., 0].to(dt)
        slope = (g * step).sum(1)  # directional derivative (< 0)
        done = -slope < tol * n
        if zd is None:  # the step's logits (CG tracks them): linear in the step, no data pass per trial
            zd = torch.bmm(Xs, step[:, :, None])[..., 0]
        t = torch.ones(len(act), dtype=dt, device=dev)
        ok = torch.ones(len(act), dtype=torch.bool, device=dev)  # (set by the first trial: the loop always runs)
        # the loss's rounding level (its sums run over terms of size |z|); a predicted decrease below it
        # cannot be judged by the loss: such a step (near the optimum: a Newton step) is taken whole
        noise = slack * (z.abs().sum(1) + f.abs())
        blind = (slope < 0) & (-slope <= 2 * noise)
        for _ in range(40):  # Armijo backtracking, per site
            ok = blind | (loss(z + t[:, None] * zd, theta + t[:, None] * step) <= f + 1e-4 * t * slope + noise)
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
        t = torch.where(ok, t, torch.zeros_like(t))  # no decrease found: stay
        done |= ~ok
        stuck += int((~ok).sum())  # no decrease along a step predicted to decrease by more than rounding
        theta, z = theta + t[:, None] * step, z + t[:, None] * zd
        f = loss(z, theta)
        if bool(done.any()):
            out[act[done]] = theta[done]
            keep = ~done
            if not bool(keep.any()):
                break
            act, theta, z, f = act[keep], theta[keep], z[keep], f[keep]
            L = None if L is None else L[keep]
            Xs = Xa[act]
            XhT = Xs.mT if hdt == dt else XhTa[act]  # fp32: a view of Xs, not a second copy
    else:
        out[act] = theta
        warnings.warn(f"fit_logreg_batched: {len(act)} of {S} probes not converged after {max_iter} Newton steps", stacklevel=2)
    if stuck:
        warnings.warn(f"fit_logreg_batched: the line search found no decrease for {stuck} of {S} probes, which "
                      f"stopped before the optimum", stacklevel=2)
    return out[:, :d], out[:, d]


def _pcg(hvp, b: torch.Tensor, precond, rtol: float, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Preconditioned conjugate gradients for ``H x = b`` per row of ``b [s, m]`` (``hvp(v)`` =
    ``(H v, X v)``: the Hessian-vector product and the data times v, ``precond(r)`` ~ H^-1 r), from
    ``x = precond(b)``, at most ``steps`` steps; a row stops once ``||b - H x|| <= rtol ||b||``.
    Returns ``(x, X x, converged [s])``."""
    x = precond(b)
    hx, xx = hvp(x)
    r = b - hx
    goal = rtol * b.norm(dim=1)
    zr = precond(r)
    d, rz = zr, (r * zr).sum(1)
    for _ in range(steps):
        live = r.norm(dim=1) > goal
        if not bool(live.any()):
            break
        Hd, Xd = hvp(d)
        alpha = torch.where(live, rz / (d * Hd).sum(1), torch.zeros_like(rz))  # converged rows stay
        x, xx, r = x + alpha[:, None] * d, xx + alpha[:, None] * Xd, r - alpha[:, None] * Hd
        zr = precond(r)
        rz_new = (r * zr).sum(1)
        d = torch.where(live[:, None], zr + (rz_new / rz)[:, None] * d, d)
        rz = torch.where(live, rz_new, rz)
    return x, xx, r.norm(dim=1) <= goal


def standardize(Xtr: torch.Tensor, dtype: torch.dtype):
    """z-scoring fitted on ``Xtr [S, n, d]`` like sklearn's StandardScaler (ddof=0; a feature
    whose variance is within float64 rounding of 0 gets std 1). Returns ``(Xtr standardized,
    f)`` with ``f(x [S, m, d])`` -> standardized x, both in ``dtype``. Two-pass centering keeps
    near-constant features exact in their own precision: ``x - mean`` is exact when x and mean
    are close (Sterbenz)."""
    n = Xtr.shape[1]
    m1 = Xtr.mean(1, keepdim=True)
    c = Xtr - m1
    m2 = c.mean(1, keepdim=True)  # rounding error of the first mean
    c -= m2
    var = (c * c).mean(1, keepdim=True).double()
    eps, mu = torch.finfo(torch.float64).eps, m1.double() + m2.double()
    constant = var <= n * eps * var + (n * mu * eps) ** 2  # sklearn's _is_constant_feature
    sd = torch.where(constant, torch.ones_like(var), var.sqrt()).to(Xtr.dtype)
    return (c / sd).to(dtype), lambda x: ((x.to(Xtr.dtype) - m1 - m2) / sd).to(dtype)
