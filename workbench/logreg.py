"""Batched L2 logistic regression: many independent probes fitted at once by damped Newton, and
the sklearn-identical z-scoring they are fitted on. :mod:`workbench.probes` drives it per site
group and fold; see its docstring for when it beats the sklearn loop.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import sys
import warnings
from collections.abc import Callable, Sequence

import torch


def fit_logreg_batched(
    X: torch.Tensor, y: torch.Tensor, l2: float | torch.Tensor = 1.0, tol: float = 1e-5, max_iter: int = 50,
    hessian_dtype: torch.dtype | None = None, cg_rtol: float = 1e-2, cg_steps: int = 3, forcing: float = 1.0,
    intercept_column: bool = False, gram: torch.Tensor | None = None, XT: torch.Tensor | None = None,
    XhT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit S independent L2 logistic regressions at once by damped (inexact) Newton.

    X: ``[S, n, d]`` (already standardized), y: ``[n]`` 0/1. Minimizes, per site,
    ``sum_i logloss_i + 0.5 * l2 * ||w||^2`` with an unpenalized intercept -- the optimum of
    sklearn's ``LogisticRegression(C=1/l2)``. The first iteration builds the exact Hessian
    ``[S, d+1, d+1]`` with one batched matmul (or from ``gram``) and factors it (Cholesky); later iterations solve
    their Newton system by conjugate gradients on exact Hessian-vector products (two passes over
    the data), preconditioned by the last factor, within ``cg_steps`` steps -- and build and
    factor a new Hessian only where that fails (the Hessian changes less and less as Newton
    converges; ``cg_steps=0``: a new Hessian every step). Each system is solved to a relative
    residual of ``forcing * sqrt(|g| / |g_0|)`` between ``cg_rtol`` and 0.5 (an inexact Newton
    method's forcing term: loose far from the optimum, tight near it; ``forcing=0``: ``cg_rtol``). Each step backtracks per site
    (Armijo). A site stops after a step whose Newton decrement ``-g.step`` is below ``tol * n``;
    finished sites leave the batch once a quarter of it has finished. Returns ``(w [S, d], b [S])``
    in X's dtype and device. ``intercept_column``: X is ``[S, n, d+1]`` whose last column is
    ones (:func:`standardize` writes it so), fitted in place of a copy of X with that column.

    ``hessian_dtype`` (e.g. ``torch.bfloat16``, where matrix units make it several times faster:
    :func:`workbench._hardware.fast_bf16`) builds the Hessian in that precision; its factor then
    preconditions the same conjugate gradients on the exact Hessian, so that the gradient, the
    loss, the line search and the optimum stay those of X's dtype.

    ``l2``: a float, or one penalty per site and feature ``[S, d]`` (all > 0): the penalty is then
    ``0.5 * sum(l2 * w**2)`` (:func:`standardize_folds` needs it). What the caller may already hold
    (with ``intercept_column``): ``gram`` = ``X^T X`` ``[S, d+1, d+1]`` in any precision, whence the
    first Hessian (at w = 0 every example weighs 1/4) without a pass over the data; ``XT`` = X
    transposed ``[S, d+1, n]`` contiguous, and ``XhT`` = ``XT`` in ``hessian_dtype``.
    """
    (S, n, d), dt, dev = X.shape, X.dtype, X.device
    d -= int(intercept_column)
    if isinstance(l2, torch.Tensor):
        if l2.shape != (S, d) or not bool((l2 > 0).all()):
            raise ValueError(f"l2 as a tensor must be [S, d] = [{S}, {d}] and > 0, got shape {tuple(l2.shape)}")
        lam = l2.to(dtype=dt, device=dev)
    elif l2 <= 0:
        raise ValueError(f"l2 must be > 0 (the problem has no optimum on separable data), got {l2}")
    else:
        lam = torch.full((S, d), float(l2), dtype=dt, device=dev)
    if (gram is not None or XT is not None or XhT is not None) and not intercept_column:
        raise ValueError("gram / XT / XhT describe X with its intercept column: pass intercept_column=True")
    y = y.to(dtype=dt, device=dev)
    Xa = X if intercept_column else torch.cat([X, torch.ones(S, n, 1, dtype=dt, device=dev)], 2)  # [S, n, d+1]
    # the Hessian's ridge [S, d+1]: the intercept unpenalized (a tiny ridge on the Hessian only, for the Cholesky)
    reg = torch.cat([lam, torch.full((S, 1), 1e-6, dtype=dt, device=dev)], 1)
    theta, out = torch.zeros(S, d + 1, dtype=dt, device=dev), torch.zeros(S, d + 1, dtype=dt, device=dev)
    slack = 1e-6 if dt in (torch.float32, torch.float16, torch.bfloat16) else 1e-12  # Armijo rounding allowance

    def loss(z: torch.Tensor, th: torch.Tensor) -> torch.Tensor:  # z [s, n] logits -> [s]
        return torch.nn.functional.softplus(z).sum(1) - z @ y + 0.5 * (lam * th[:, :d] ** 2).sum(1)

    hdt = hessian_dtype or dt
    # [S, d+1, n]: the data transposed, contiguous, for X v: a batched matrix-vector product runs several
    # times faster as (1 x m) @ (m x k) over a row-major operand than as (k x m) @ (m x 1)
    XTa = Xa.transpose(1, 2).contiguous() if XT is None else XT
    XhTa = XTa if hdt == dt else XTa.to(hdt) if XhT is None else XhT  # the Hessian's copy (bf16: a faster GEMM)
    act, Xs, XTs, XhT = torch.arange(S, device=dev), Xa, XTa, XhTa  # the batch's sites and data
    live = torch.ones(S, dtype=torch.bool, device=dev)  # batch rows still being fitted

    def solve(L: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (L L^T)^-1 b; cholesky_solve copies L each call
        return torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, b[..., None], upper=False),
                                             upper=True)[..., 0]

    z = _rowvec(theta, XTs)
    f = loss(z, theta)
    L: torch.Tensor | None = None  # Cholesky factor of the last Hessian built: the preconditioner
    g0 = torch.zeros(S, dtype=dt, device=dev)  # |gradient| at the start, per batch row
    stuck = 0
    for it in range(max_iter):
        p = torch.sigmoid(z)
        g = _rowvec(p - y, Xs)  # [s, d+1]
        g[:, :d] += lam * theta[:, :d]
        g = g if bool(live.all()) else torch.where(live[:, None], g, 0)  # finished rows: b = 0, step 0
        gn = g.norm(dim=1)
        if it == 0:
            g0 = gn
        rtol = (forcing * (gn / g0.clamp_min(torch.finfo(dt).tiny)).sqrt()).clamp(cg_rtol, 0.5)  # forcing term
        wt = p * (1 - p)

        def hvp(v: torch.Tensor, Xs=Xs, XTs=XTs, wt=wt) -> tuple[torch.Tensor, torch.Tensor]:  # (H v, X v)
            xv = _rowvec(v, XTs)
            return _rowvec(wt * xv, Xs) + reg * v, xv

        step, zd = None, None
        if L is not None and cg_steps > 0:  # the last factor preconditions a few CG steps instead of a new Hessian
            step, zd, ok_cg = _pcg(hvp, -g, lambda r, L=L: solve(L, r), rtol, cg_steps)
            if not bool(ok_cg.all()):
                step = None
        if step is None:  # a new Hessian: in hdt, and exactly where hdt's rounding spoils it
            for hd in dict.fromkeys((hdt, dt)):
                XT = XhT if hd == hdt else XTs  # [s, d+1, n] in hd
                if it == 0 and gram is not None and hd == hdt:  # w = 0: every weight is 1/4
                    H = gram.to(dt).mul(0.25)
                else:
                    H = torch.bmm(XT * wt.to(hd)[:, None, :], XT.mT).to(dt)  # [s, d+1, d+1], the costly part
                H.diagonal(dim1=1, dim2=2).add_(reg)
                factor, info = cholesky_lower(H)
                L = None if bool((info != 0).any()) else factor  # indefinite (low precision, d > n): next dtype
                if L is None:
                    continue
                if hd == dt:
                    step, zd = -solve(factor, g), None
                    break
                # the low-precision factor preconditions CG on the exact Hessian
                step, zd, ok_cg = _pcg(hvp, -g, lambda r, L=factor: solve(L, r), rtol, cg_steps)
                if bool(ok_cg.all()):
                    break
                step = None
            if step is None:  # indefinite even in X's dtype: solve the exact Hessian in float64
                XT = XTs.double()  # (the H above was factored in place)
                H = torch.bmm(XT * wt.double()[:, None, :], XT.mT)
                H.diagonal(dim1=1, dim2=2).add_(reg)
                step = -torch.linalg.solve(H, g.double()[..., None])[..., 0].to(dt)
        slope = (g * step).sum(1)  # directional derivative (< 0)
        done = -slope < tol * n
        if zd is None:  # the step's logits (CG tracks them): linear in the step, no data pass per trial
            zd = _rowvec(step, XTs)
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
        stuck += int((~ok & live).sum())  # no decrease along a step predicted to decrease by more than rounding
        theta, z = theta + t[:, None] * step, z + t[:, None] * zd
        f = loss(z, theta)
        fin = done & live
        if bool(fin.any()):
            out[act[fin]] = theta[fin]
            live &= ~fin
            if not bool(live.any()):
                break
            if 4 * int(live.sum()) <= 3 * len(live):  # a quarter finished: compact (copies the data)
                L = None if L is None else L[live]
                act, theta, z, f, g0, lam, reg = act[live], theta[live], z[live], f[live], g0[live], lam[live], reg[live]
                live = live[live]
                Xs, XTs = Xa[act], XTa[act]
                XhT = XTs if hdt == dt else XhTa[act]
    else:
        out[act[live]] = theta[live]
        warnings.warn(f"fit_logreg_batched: {int(live.sum())} of {S} probes not converged after {max_iter} Newton "
                      f"steps", stacklevel=2)
    if stuck:
        warnings.warn(f"fit_logreg_batched: the line search found no decrease for {stuck} of {S} probes, which "
                      f"stopped before the optimum", stacklevel=2)
    return out[:, :d], out[:, d]


def cholesky_lower(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cholesky factors ``L [s, m, m]`` (``L L^T = H``) of symmetric positive definite ``H [s, m, m]``
    and LAPACK's ``info [s]`` (0: success), like ``torch.linalg.cholesky_ex``. H is overwritten.

    On a CPU whose torch exports LAPACK's potrf (MKL builds), each matrix is factored in place and
    ``L`` is ``H``, whose strict upper triangle is left unspecified: what
    ``torch.linalg.solve_triangular`` reads is its lower triangle only. ``cholesky_ex`` copies each
    matrix and zeroes that triangle afterwards, which costs as much again as the factorization
    (577 x 577 float32: 8.2 -> 5.1 ms for 5 matrices). Elsewhere: ``cholesky_ex``.
    """
    potrf = _potrf().get(H.dtype)
    if potrf is None or H.device.type != "cpu" or not H.is_contiguous() or H.dim() != 3 or H.shape[0] == 0:
        return torch.linalg.cholesky_ex(H)
    s, m, _ = H.shape
    info, n, uplo = ctypes.c_int(0), ctypes.c_int(m), ctypes.c_char(b"U")
    out = torch.empty(s, dtype=torch.int32)
    for i in range(s):  # row-major H is column-major H^T = H: its "U" factor (U^T U = H) is L, row-major
        potrf(ctypes.byref(uplo), ctypes.byref(n), ctypes.c_void_p(H[i].data_ptr()), ctypes.byref(n),
              ctypes.byref(info))
        out[i] = info.value
    return H, out


@functools.cache
def _potrf() -> dict[torch.dtype, Callable[..., None]]:
    """LAPACK's spotrf_/dpotrf_ (32-bit integers) from torch's CPU library, checked on a 2 x 2 matrix;
    {} where the library does not export them or they answer wrong."""
    name = {"linux": "libtorch_cpu.so", "darwin": "libtorch_cpu.dylib"}.get(sys.platform)
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", name or "torch_cpu.dll"))
        fns = {torch.float32: lib.spotrf_, torch.float64: lib.dpotrf_}
    except (OSError, AttributeError):
        return {}
    for dt, fn in fns.items():
        fn.restype = None
        A = torch.tensor([[[4.0, 2.0], [2.0, 5.0]]], dtype=dt)
        info, n, uplo = ctypes.c_int(-1), ctypes.c_int(2), ctypes.c_char(b"U")
        fn(ctypes.byref(uplo), ctypes.byref(n), ctypes.c_void_p(A.data_ptr()), ctypes.byref(n), ctypes.byref(info))
        if info.value != 0 or not torch.allclose(A[0].tril(), torch.tensor([[2.0, 0.0], [1.0, 2.0]], dtype=dt)):
            return {}
    return fns


def _rowvec(v: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``v [s, m]`` times ``M [s, m, k]`` -> ``[s, k]``, per row."""
    return torch.bmm(v[:, None, :], M)[:, 0]


def _pcg(
    hvp, b: torch.Tensor, precond, rtol: float | torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Preconditioned conjugate gradients for ``H x = b`` per row of ``b [s, m]`` (``hvp(v)`` =
    ``(H v, X v)``: the Hessian-vector product and the data times v, ``precond(r)`` ~ H^-1 r), from
    ``x = precond(b)``, at most ``steps`` steps; a row stops once ``||b - H x|| <= rtol ||b||``
    (``rtol``: a float or one per row ``[s]``).
    Returns ``(x, X x, converged [s])``."""
    x = precond(b)
    hx, xx = hvp(x)
    r = b - hx
    goal = rtol * b.norm(dim=1)
    live = r.norm(dim=1) > goal
    if steps == 0 or not bool(live.any()):  # the preconditioned start is good enough
        return x, xx, ~live
    zr = precond(r)
    d, rz = zr, (r * zr).sum(1)
    for i in range(steps):
        Hd, Xd = hvp(d)
        alpha = torch.where(live, rz / (d * Hd).sum(1), torch.zeros_like(rz))  # converged rows stay
        x, xx, r = x + alpha[:, None] * d, xx + alpha[:, None] * Xd, r - alpha[:, None] * Hd
        live = r.norm(dim=1) > goal
        if i == steps - 1 or not bool(live.any()):  # (no preconditioning for a step not taken)
            break
        zr = precond(r)
        rz_new = (r * zr).sum(1)
        d = torch.where(live[:, None], zr + (rz_new / rz)[:, None] * d, d)
        rz = torch.where(live, rz_new, rz)
    return x, xx, r.norm(dim=1) <= goal


def standardize(Xtr: torch.Tensor, dtype: torch.dtype, intercept_column: bool = False):
    """z-scoring fitted on ``Xtr [S, n, d]`` like sklearn's StandardScaler (ddof=0; a feature
    whose variance is within float64 rounding of 0 gets std 1). Returns ``(Xtr standardized,
    f)`` with ``f(x [S, m, d])`` -> standardized x ``[S, m, d]``, both in ``dtype``; with
    ``intercept_column`` the standardized training data is ``[S, n, d+1]``, its last column ones
    (what :func:`fit_logreg_batched` fits with ``intercept_column=True``: no copy to add it). Two-pass
    centering keeps near-constant features exact in their own precision: ``x - mean`` is exact
    when x and mean are close (Sterbenz)."""
    S, n, d = Xtr.shape
    m1 = Xtr.mean(1, keepdim=True)
    out = torch.empty(S, n, d + int(intercept_column), dtype=Xtr.dtype, device=Xtr.device)
    c = out[..., :d]
    torch.sub(Xtr, m1, out=c)
    m2 = c.mean(1, keepdim=True)  # rounding error of the first mean
    c.sub_(m2)
    var = (c * c).mean(1, keepdim=True).double()  # (torch.var_mean: 20x slower here)
    sd = _sklearn_std(var, m1.double() + m2.double(), n).to(Xtr.dtype)
    c.div_(sd)
    if intercept_column:
        out[..., d] = 1
    return out.to(dtype), lambda x: ((x.to(Xtr.dtype) - m1 - m2) / sd).to(dtype)


def standardize_folds(
    X: torch.Tensor, sizes: Sequence[int], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """z-scoring for K-fold cross-validation, done once instead of once per fold.

    ``X [S, N, d]`` holds the rows of fold k (held out by fold k's probe) at positions
    ``sum(sizes[:k]) .. sum(sizes[:k+1])``. sklearn's pipeline z-scores each fold's training rows
    with their own mean ``mu_k`` and std ``sd_k`` (its constant-feature rule: std 1). Returns
    ``Z [S, N, d+1]`` in ``dtype``: ``(X - m) / s`` with all rows' mean and std (same rule), its
    last column ones (``m`` is the mean in X's precision: any centre will do, the intercept absorbs
    it), and ``scale [K, S, d]`` (float64) = ``sd_k / s``. Fold k's probe is then the
    fit of Z's training rows with the per-feature penalty ``l2 * scale[k]**2``: as
    ``(X - mu_k) / sd_k = Z / scale + const``, its logits ``Z u + b`` on any row are the pipeline's
    (``u = w / scale``, the constant moved into the intercept), the same optimization problem in
    other coordinates. The statistics come from per-fold sums of ``x - m`` and its square (one
    matrix product each), in X's precision like :func:`standardize`'s, combined in float64.
    """
    S, N, d = X.shape
    if sum(sizes) != N or min(sizes) < 1:
        raise ValueError(f"fold sizes {list(sizes)} must be positive and sum to N={N}")
    f64 = torch.float64
    m1 = X.mean(1, keepdim=True)
    out = torch.empty(S, N, d + 1, dtype=X.dtype, device=X.device)
    c = out[..., :d]
    torch.sub(X, m1, out=c)  # x - m1, exact for x near m1 (Sterbenz); m1's own rounding is in the sums below
    member = torch.zeros(len(sizes), N, dtype=X.dtype, device=X.device)  # [K, N]: fold k's rows
    for k, (lo, hi) in enumerate(itertools.pairwise(itertools.accumulate(sizes, initial=0))):
        member[k, lo:hi] = 1
    s1 = torch.matmul(member, c).to(f64).transpose(0, 1)  # [K, S, d]: per-fold sums of x - m1
    s2 = torch.matmul(member, c * c).to(f64).transpose(0, 1)  # and of their squares
    mu0 = m1.to(f64)[:, 0]  # [S, d]

    def std(t1: torch.Tensor, t2: torch.Tensor, n: torch.Tensor) -> torch.Tensor:  # sklearn's std from the sums
        mean = t1 / n
        return _sklearn_std((t2 / n - mean * mean).clamp_min(0), mu0 + mean, n)

    n_k = torch.tensor(list(sizes), dtype=f64, device=X.device)[:, None, None]
    s = std(s1.sum(0), s2.sum(0), n_k.sum())  # [S, d]
    scale = std(s1.sum(0) - s1, s2.sum(0) - s2, N - n_k) / s  # [K, S, d]: each fold's training rows
    c.div_(s[:, None].to(X.dtype))
    out[..., d] = 1
    return out.to(dtype), scale


def _sklearn_std(var: torch.Tensor, mean: torch.Tensor, n: int | torch.Tensor) -> torch.Tensor:
    """StandardScaler's std from float64 ``var`` and ``mean`` of ``n`` rows: 1 where the variance is
    within float64 rounding of 0 (sklearn's ``_is_constant_feature``), else ``sqrt(var)``."""
    eps = torch.finfo(torch.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    return torch.where(constant, torch.ones_like(var), var.sqrt())
