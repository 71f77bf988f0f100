"""Tests for workbench.erasure (LEACE) against its closed-form properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench import plots
from workbench.erasure import LeaceEraser, erasure_check, erasure_hook, fit_erasers
from workbench.probes import probe_sweep

D = 24


def concept_data(n: int = 2000, d: int = D, strength: float = 3.0, massive: bool = False, seed: int = 0):
    """X [n, d] float64 with a linear concept y [n] planted along a fixed direction and
    correlated noise; optionally one massive-activation dimension (huge mean and variance)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    A = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5 + torch.eye(d, dtype=torch.float64)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) @ A + strength * (y[:, None] - 0.5) * u / u.norm()
    if massive:
        X[:, 3] = 500 + 200 * torch.randn(n, generator=g, dtype=torch.float64) + 0.5 * y
    return X, y


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "massive"])
def fitted(request):
    X, y = concept_data(massive=request.param)
    return X, y, LeaceEraser().fit(X, y)


def test_class_means_equal_and_cross_covariance_zero(fitted):
    X, y, e = fitted
    Xe = e(X)
    gap_before = (X[y == 1].mean(0) - X[y == 0].mean(0)).norm()
    gap_after = (Xe[y == 1].mean(0) - Xe[y == 0].mean(0)).norm()
    assert gap_before > 1.0 and gap_after < 1e-9 * gap_before
    z = y.double() - y.double().mean()
    cov = (Xe - Xe.mean(0)).T @ z / len(y)
    assert cov.abs().max() < 1e-10


def test_idempotent_rank_one_along_mean_difference(fitted):
    X, y, e = fitted
    Xe = e(X)
    assert torch.allclose(e(Xe), Xe, atol=1e-9)
    assert e.rank == 1 and torch.allclose(e.P @ e.P, e.P, atol=1e-9)
    delta = X - Xe
    sv = torch.linalg.svdvals(delta)
    assert sv[1] < 1e-9 * sv[0]  # the edit lives in a rank-1 subspace
    diff = X[y == 1].mean(0) - X[y == 0].mean(0)
    v = torch.linalg.svd(delta, full_matrices=False).Vh[0]
    assert abs(v @ diff / diff.norm()) == pytest.approx(1.0, abs=1e-9)  # ... spanned by Sigma_XZ


def test_minimal_change(fitted):
    """E||r(X) - X||^2 equals the closed form ||d||^2 / (d' Sigma^-1 d) and beats other erasers."""
    X, y, e = fitted
    n = len(y)
    Xc = X - X.mean(0)
    sigma = Xc.T @ Xc / n
    dvec = Xc.T @ (y.double() - y.double().mean()) / n  # Sigma_XZ
    leace = ((X - e(X)) ** 2).sum(1).mean()
    closed = dvec @ dvec / (dvec @ torch.linalg.solve(sigma, dvec))
    assert leace == pytest.approx(float(closed), rel=1e-8)
    # every rank-1 eraser x - a b'(x - mu) with a = Sigma_XZ, b'Sigma_XZ = 1 also zeroes the cross-covariance
    g = torch.Generator().manual_seed(1)
    for b in [dvec / (dvec @ dvec)] + [torch.randn(X.shape[1], generator=g, dtype=torch.float64) for _ in range(5)]:
        b = b / (b @ dvec)
        other = Xc @ b[:, None] * dvec[None]
        assert (Xc - other).T @ (y.double() - y.double().mean()) / n == pytest.approx(torch.zeros(X.shape[1]), abs=1e-9)
        assert (other**2).sum(1).mean() >= leace * (1 - 1e-9)  # b = d/|d|^2 is the orthogonal projection


@pytest.mark.parametrize("massive", [False, True], ids=["plain", "massive"])
def test_probe_falls_to_chance(massive):
    """Eraser fit on one sample, probe (sklearn reference, 5-fold) on a fresh erased sample."""
    X, y = concept_data(4000, massive=massive, seed=5)
    e = LeaceEraser().fit(X[:2000], y[:2000])
    site = "blocks.5.hook_resid_post"
    raw = probe_sweep({site: X[2000:].float()}, y[2000:], method="sklearn")
    erased = probe_sweep({site: e(X[2000:]).float()}, y[2000:], method="sklearn")
    assert raw["accuracy"].iloc[0] > 0.85
    assert abs(erased["accuracy"].iloc[0] - 0.5) < 0.05
    assert abs(erased["auroc"].iloc[0] - 0.5) < 0.05
    # fit and probed on the SAME data: the erased class means are exactly equal overall, so each
    # held-out fold's mean gap is the negative of its training folds' -> at or below chance
    insample = probe_sweep({site: LeaceEraser().fit(X[:2000], y[:2000])(X[:2000]).float()}, y[:2000], method="sklearn")
    assert insample["accuracy"].iloc[0] < 0.53


def test_multiclass_rank():
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, 3, (1500,), generator=g)
    X = torch.randn(1500, 10, generator=g, dtype=torch.float64) + torch.randn(3, 10, generator=g, dtype=torch.float64)[z]
    e = LeaceEraser().fit(X, z)
    assert e.rank == 2
    Xe = e(X)
    means = torch.stack([Xe[z == k].mean(0) for k in range(3)])
    assert (means - means.mean(0)).abs().max() < 1e-9


def test_call_shapes_dtypes_and_hook(fitted):
    X, y, e = fitted
    acts = X[:24].reshape(2, 12, D)
    for dt in (torch.float32, torch.float64, torch.bfloat16):
        a = acts.to(dt)
        out = e(a, "blocks.5.hook_resid_post")  # usable as fn(tensor, site)
        assert out.shape == a.shape and out.dtype == dt and out.device == a.device
        ref = e(a.double().reshape(-1, D)).reshape(a.shape)
        tol = 1e-9 if dt == torch.float64 else (1e-3 if dt == torch.float32 else 1.0)
        assert torch.allclose(out.double(), ref.to(dt).double(), atol=tol * max(1.0, float(acts.abs().max())))
    with pytest.raises(ValueError, match="fitted on d="):
        e(torch.zeros(3, D + 1))
    with pytest.raises(RuntimeError, match="not fitted"):
        LeaceEraser()(acts)
    # per-head hook: only head 1 of a [batch, pos, H, dh] tensor is erased
    z = torch.randn(2, 5, 3, D, dtype=torch.float64)
    fn = erasure_hook({"blocks.5.attn.hook_z[1]": e, "blocks.5.hook_resid_post": e})
    out = fn(z, "blocks.5.attn.hook_z")
    assert torch.equal(out[:, :, 0], z[:, :, 0]) and torch.allclose(out[:, :, 1], e(z[:, :, 1]))
    assert torch.allclose(fn(acts, "blocks.5.hook_resid_post"), e(acts)) and fn(acts, "other") is acts


def test_save_load_roundtrip(tmp_path, fitted):
    X, y, e = fitted
    path = e.save(tmp_path / "erasers" / "layer5.safetensors")
    assert path.read_bytes()[:8] != b"\x80\x04\x95"[:8]  # not a pickle
    e2 = LeaceEraser.load(path)
    assert torch.equal(e2(X), e(X)) and e2.rank == e.rank and e2.n_fit == len(y)
    e3 = LeaceEraser.from_dict(e.to_dict())
    assert torch.equal(e3(X), e(X))
    assert repr(e) == f"LeaceEraser(d={D}, rank=1, n_fit={len(y)})" and "unfitted" in repr(LeaceEraser())
    with pytest.raises(ValueError, match="not a LeaceEraser"):
        LeaceEraser.from_dict({**e.to_dict(), "meta": {"format": "other"}})


def test_fit_errors():
    X, y = concept_data(100)
    with pytest.raises(ValueError, match="two classes"):
        LeaceEraser().fit(X, torch.zeros(100, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        LeaceEraser().fit(torch.full_like(X, float("nan")), y)
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        LeaceEraser().fit(X[None], y)


def _closed_form(X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LEACE from the paper's formula, written out: x - W^+ P_{W S_xz} W (x - mean)."""
    X = X.double()
    Z = torch.nn.functional.one_hot(y, 2).double()
    Xc = X - X.mean(0)
    s_xx, s_xz = Xc.T @ Xc / len(X), Xc.T @ (Z - Z.mean(0)) / len(X)
    ev, V = torch.linalg.eigh(s_xx)
    keep = ev > ev.max() * 1e-12
    W = (V[:, keep] / ev[keep].sqrt()) @ V[:, keep].T
    W_inv = (V[:, keep] * ev[keep].sqrt()) @ V[:, keep].T
    u = torch.linalg.svd(W @ s_xz, full_matrices=False)[0][:, :1]  # binary concept: rank 1
    return X - Xc @ (W_inv @ u @ u.T @ W).T


def test_concept_erasure_package_matches_the_closed_form():
    """The adapter over EleutherAI's concept-erasure gives the paper's eraser and a zero cross-covariance."""
    X, y = concept_data(500)
    e = LeaceEraser().fit(X, y)
    assert e.rank == 1
    torch.testing.assert_close(e(X.double()), _closed_form(X, y), atol=1e-8, rtol=0)
    out = e(X.double())
    z = (y.double() - y.double().mean())[:, None]
    assert ((out - out.mean(0)).T @ z).abs().max() < 1e-8


def test_erasure_check():
    X1, y = concept_data(600, strength=4.0, massive=True, seed=3)
    g = torch.Generator().manual_seed(4)
    feats = {
        "blocks.0.hook_resid_post": X1.float(),
        "blocks.1.hook_resid_post": torch.randn(600, D, generator=g),  # no concept
        "blocks.1.attn.hook_z[0]": (X1[:, :8] + torch.randn(600, 8, generator=g, dtype=torch.float64)).float(),
    }
    df = erasure_check(feats, y).set_index("site")
    assert df.loc["blocks.0.hook_resid_post", "accuracy_before"] > 0.9
    assert (df["accuracy_after"] - 0.5).abs().max() < 0.07
    assert (df["rank"] == 1).all()
    for col in ("accuracy_before_ci_low", "auroc_before", "accuracy_after_ci_high", "auroc_after_ci_low"):
        assert col in df.columns
    # "before" is exactly the plain probe on the same folds
    plain = probe_sweep(feats, y).set_index("site")
    np.testing.assert_allclose(df["accuracy_before"], plain.loc[df.index, "accuracy"])
    sk = erasure_check(feats, y, method="sklearn").set_index("site")
    assert (sk["accuracy_after"] - df["accuracy_after"]).abs().max() <= 0.02
    # a concept living in float32-rounding-scale variation (a near-constant head) is erased too
    g2 = torch.Generator().manual_seed(5)
    tiny = 0.25 + 3e-8 * (torch.randn(600, 8, generator=g2, dtype=torch.float64) + 2.0 * (y[:, None] - 0.5))
    one = erasure_check({"blocks.2.attn.hook_z[1]": tiny.float()}, y)
    assert one["accuracy_before"].iloc[0] > 0.7 and abs(one["accuracy_after"].iloc[0] - 0.5) < 0.07
    fig = plots.erasure_plot(df.reset_index())
    assert len(fig.data) == 4  # (resid_post, z best head) x (before, after)
    erasers = fit_erasers(feats, y)
    assert set(erasers) == set(feats) and all(e.rank == 1 for e in erasers.values())
