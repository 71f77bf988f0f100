"""Tests for workbench.probes (and the probe figures in workbench.plots).

Ground truth is computed independently: sklearn pipelines on StratifiedKFold folds,
sklearn's roc_auc_score, direct numpy means.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from workbench import plots, probes
from workbench.concepts import diff_means
from workbench.logreg import fit_logreg_batched
from workbench.probes import (
    diff_means_separation,
    drop_dimensions,
    make_folds,
    massive_dimensions,
    probe_sweep,
    probe_transfer,
    split_heads,
)
from workbench.sites import split_site
from workbench.stats import auroc_weighted, wilson_interval

STRENGTHS = (0.0, 0.4, 1.0, 4.0)  # planted-concept strength per "layer": chance .. easy
D_RESID, D_HEAD, MASSIVE = 48, 12, 7


def planted(n: int = 500, seed: int = 0, strengths=STRENGTHS, massive: bool = True, shift: float = 0.0):
    """Sites ``blocks.{i}.hook_resid_post`` [n, 48] (with a massive dim 7) and
    ``blocks.{i}.attn.hook_z[0]`` [n, 12], concept strength ``strengths[i]``; labels [n]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(n, dtype=torch.long)
    y[torch.randperm(n, generator=g)[: n // 2]] = 1
    sign = (2 * y - 1).float()[:, None]
    latent = torch.randn(n, 4, generator=g)
    feats = {}
    for i, st in enumerate(strengths):
        for d, name in ((D_RESID, f"blocks.{i}.hook_resid_post"), (D_HEAD, f"blocks.{i}.attn.hook_z[0]")):
            gs = torch.Generator().manual_seed(1000 + 10 * i + d)  # same directions across seeds / splits
            u = torch.randn(d, generator=gs)
            loadings = torch.randn(4, d, generator=gs) * 0.5
            x = torch.randn(n, d, generator=g) + latent @ loadings + (st / 2) * sign * u / u.norm() + shift
            if massive and d == D_RESID:
                x[:, MASSIVE] = 400 + 150 * torch.randn(n, generator=g)
            feats[name] = x
    return feats, y


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.fixture(scope="module")
def sweeps(data):
    feats, y = data
    return {m: probe_sweep(feats, y, method=m, return_scores=True) for m in ("torch", "sklearn")}


# ----------------------------------------------------------------------------- site names
def test_split_site():
    assert split_site("blocks.12.hook_resid_post") == ("resid_post", 12, None)
    assert split_site("blocks.0.hook_resid_pre") == ("resid_pre", 0, None)
    assert split_site("blocks.3.hook_resid_mid") == ("resid_mid", 3, None)
    assert split_site("blocks.29.hook_attn_out") == ("attn_out", 29, None)
    assert split_site("blocks.7.hook_mlp_out") == ("mlp_out", 7, None)
    assert split_site("blocks.12.attn.hook_z[3]") == ("z", 12, 3)
    assert split_site("blocks.12.attn.hook_z") == ("z", 12, None)
    for bad in ("hook_embed", "blocks.x.hook_resid_post", "blocks.1.attn.hook_z[a]", "resid_post"):
        with pytest.raises(ValueError, match="cannot parse site"):
            split_site(bad)


def test_split_heads():
    z = torch.randn(10, 3, 4)
    r = torch.randn(10, 8)
    out = split_heads({"blocks.2.attn.hook_z": z, "blocks.2.hook_resid_post": r})
    assert list(out) == [f"blocks.2.attn.hook_z[{h}]" for h in range(3)] + ["blocks.2.hook_resid_post"]
    for h in range(3):
        assert torch.equal(out[f"blocks.2.attn.hook_z[{h}]"], z[:, h])
    assert out["blocks.2.hook_resid_post"] is r


# ----------------------------------------------------------------------------- torch vs sklearn
def test_torch_matches_sklearn(sweeps):
    (t, ts), (s, ss) = sweeps["torch"], sweeps["sklearn"]
    assert list(t["site"]) == list(s["site"])
    assert (t["accuracy"] - s["accuracy"]).abs().max() <= 0.01
    assert (t["auroc"] - s["auroc"]).abs().max() <= 0.01
    assert np.abs(ts["scores"] - ss["scores"]).max() < 0.05  # same optimum, not just same accuracy
    np.testing.assert_array_equal(ts["fold"], ss["fold"])
    # sites span chance .. easy, for both widths
    for d in (D_RESID, D_HEAD):
        acc = t[t["d"] == d].sort_values("layer")["accuracy"].to_numpy()
        assert acc[0] < 0.6 and acc[-1] > 0.9, acc


def test_bf16_hessians_reach_the_fp32_optimum(data, monkeypatch):
    """Hessians built in bf16 (the step refined against the exact one) land on the same optimum as
    fp32 Newton, and the sweep on the same predictions; forced on, whatever this CPU's units."""
    g = torch.Generator().manual_seed(5)
    n, d = 400, 60
    y = (torch.rand(n, generator=g) < 0.5).long()
    X = torch.randn(3, n, d, generator=g) + y[None, :, None] * torch.linspace(0.1, 1.0, 3)[:, None, None]
    w32, b32 = fit_logreg_batched(X, y, tol=1e-9)
    bmm, seen = torch.bmm, set()
    monkeypatch.setattr(torch, "bmm", lambda a, b: seen.add(a.dtype) or bmm(a, b))
    w16, b16 = fit_logreg_batched(X, y, tol=1e-9, hessian_dtype=torch.bfloat16)
    monkeypatch.setattr(torch, "bmm", bmm)
    assert seen == {torch.float32, torch.bfloat16}  # the Hessians in bf16, everything else in fp32
    torch.testing.assert_close(w16, w32, atol=2e-4, rtol=0)
    torch.testing.assert_close(b16, b32, atol=2e-4, rtol=0)
    feats, labels = data
    sweeps = {}
    monkeypatch.setattr(probes, "BF16_MIN_WIDTH", 1)  # the planted sites are narrow
    for flag in (False, True):
        monkeypatch.setattr(probes, "BF16_HESSIANS", flag)
        sweeps[flag] = probe_sweep(feats, labels, return_scores=True)[1]["scores"]
    assert np.abs(sweeps[True] - sweeps[False]).max() < 0.05  # both stop within tol of the optimum
    np.testing.assert_array_equal(sweeps[True] > 0, sweeps[False] > 0)


def test_tiny_variance_feature_standardized_like_sklearn():
    """A float32 feature with a huge mean and a tiny (but real) spread carries the concept:
    standardization must use float64 stats and sklearn's constant-feature rule."""
    g = torch.Generator().manual_seed(7)
    n = 400
    y = torch.arange(n) % 2
    x = torch.randn(n, 6, generator=g)
    x[:, 0] = 1000 + 3e-4 * (torch.randn(n, generator=g) + 1.5 * (2 * y - 1))
    x[:, 1] = 5.0  # exactly constant
    feats = {"blocks.0.hook_resid_post": x}
    t, s = probe_sweep(feats, y), probe_sweep(feats, y, method="sklearn")
    assert s["accuracy"].iloc[0] > 0.85
    assert abs(t["accuracy"].iloc[0] - s["accuracy"].iloc[0]) <= 0.01


def test_folds_are_stratified_kfold_and_shared(data, sweeps):
    feats, y = data
    _, info = sweeps["sklearn"]
    skf = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    expected = np.empty(len(y), dtype=int)
    for f, (_, te) in enumerate(skf.split(np.zeros(len(y)), y.numpy())):
        expected[te] = f
    np.testing.assert_array_equal(info["fold"], expected)
    # an independent sklearn loop on those folds reproduces the out-of-fold scores of one site
    site = "blocks.2.hook_resid_post"
    i = list(feats).index(site)
    oof = np.empty(len(y))
    for tr, te in skf.split(np.zeros(len(y)), y.numpy()):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, tol=1e-6))
        clf.fit(feats[site][tr].double().numpy(), y[tr].numpy())
        oof[te] = clf.decision_function(feats[site][te].double().numpy())
    np.testing.assert_allclose(info["scores"][i], oof, atol=1e-8)
    # the same tensor under two names, batched with different neighbours, gives the same row
    dup = {"blocks.9.hook_resid_post": feats[site], **feats, "copy": feats[site]}
    df = probe_sweep(dup, y).set_index("site")
    cols = ["accuracy", "auroc", "accuracy_fold_std"]
    np.testing.assert_allclose(df.loc["copy", cols].to_numpy(float), df.loc["blocks.9.hook_resid_post", cols].to_numpy(float))
    assert pd.isna(df.loc["copy", "layer"]) and df.loc["copy", "kind"] == "copy"


def test_deterministic_for_seed(data):
    feats, y = data
    a = probe_sweep(feats, y, seed=1)
    b = probe_sweep(feats, y, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not np.array_equal(make_folds(y, 5, 1)[0][1], make_folds(y, 5, 2)[0][1])


def test_feature_dtypes(data):
    """Sites in bf16 are fitted on their float32 values; float64 sites in float64 statistics (the
    solve itself in float32 either way): the same probes as float32 copies."""
    feats, y = data
    feats = dict(list(feats.items())[:4])
    rounded = {s: x.bfloat16() for s, x in feats.items()}
    ref = probe_sweep({s: x.float() for s, x in rounded.items()}, y, return_scores=True)[1]["scores"]
    np.testing.assert_array_equal(probe_sweep(rounded, y, return_scores=True)[1]["scores"], ref)
    ref = probe_sweep(feats, y, return_scores=True)[1]["scores"]
    got = probe_sweep({s: x.double() for s, x in feats.items()}, y, return_scores=True)[1]["scores"]
    np.testing.assert_allclose(got, ref, atol=1e-3)


def test_batches_of_sites_give_the_same_probes(data, monkeypatch):
    feats, y = data
    whole = probe_sweep(feats, y, seed=1, return_scores=True)
    monkeypatch.setattr(probes, "BATCH_BYTES", 1)  # every site its own solve
    assert all(len(b) == 1 for b in probes._groups(list(feats), feats))
    alone = probe_sweep(feats, y, seed=1, return_scores=True)
    np.testing.assert_allclose(alone[1]["scores"], whole[1]["scores"], atol=1e-4)
    pd.testing.assert_series_equal(alone[0]["accuracy"], whole[0]["accuracy"])


def test_parallel_solves_give_the_same_probes_and_restore_threads(data, monkeypatch):
    """Two solves at once (SOLVE_WORKERS) give the probes of one at a time, in the right rows;
    torch's thread count is restored afterwards, also when a solve fails."""
    feats, y = data
    monkeypatch.setattr(probes, "BATCH_BYTES", 1)  # many solves, so that both workers get several
    threads = torch.get_num_threads()
    monkeypatch.setattr(probes, "SOLVE_WORKERS", 1)
    one = probe_sweep(feats, y, seed=1, return_scores=True)
    monkeypatch.setattr(probes, "SOLVE_WORKERS", 2)
    two = probe_sweep(feats, y, seed=1, return_scores=True)
    np.testing.assert_allclose(two[1]["scores"], one[1]["scores"], atol=1e-4)
    pd.testing.assert_series_equal(two[0]["accuracy"], one[0]["accuracy"])
    assert torch.get_num_threads() == threads

    def fail() -> None:
        raise RuntimeError("a solve failed")

    torch.set_num_threads(2)
    with pytest.raises(RuntimeError, match="a solve failed"):
        probes._solve_all([lambda: 1, fail, lambda: 3], "cpu")
    assert torch.get_num_threads() == 2
    assert probes._solve_all([lambda: 1, lambda: 2, lambda: 3], "cpu") == [1, 2, 3]
    torch.set_num_threads(threads)


def test_metrics_match_independent_computation(data, sweeps):
    _, y = data
    df, info = sweeps["torch"]
    yy = y.numpy()
    for i, row in df.iterrows():
        sc = info["scores"][i]
        assert row["accuracy"] == pytest.approx(((sc > 0) == (yy == 1)).mean())
        assert row["auroc"] == pytest.approx(roc_auc_score(yy, sc), abs=1e-12)
        assert row["accuracy_ci_low"] < row["accuracy"] < row["accuracy_ci_high"]
        assert row["auroc_ci_low"] <= row["auroc"] <= row["auroc_ci_high"]
        fold_acc = [((sc[info["fold"] == f] > 0) == (yy[info["fold"] == f] == 1)).mean() for f in range(5)]
        assert row["accuracy_fold_std"] == pytest.approx(np.std(fold_acc, ddof=1))
    lo, hi = wilson_interval(np.array([50, 0]), 100)
    np.testing.assert_allclose([lo[0], hi[0]], [0.403832, 0.596168], atol=1e-6)
    assert lo[1] == pytest.approx(0.0, abs=1e-12) and hi[1] == pytest.approx(0.036994, abs=1e-6)


def test_weighted_auroc_equals_explicit_resampling():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    scores = np.stack([rng.normal(size=60) + y, np.round(rng.normal(size=60) + 2 * y, 1)])  # row 2: many ties
    idx = rng.integers(0, 60, size=(5, 60))
    counts = np.stack([np.bincount(r, minlength=60) for r in idx]).astype(float)
    got = auroc_weighted(scores, y, counts)
    untied = auroc_weighted(scores[:1], y, counts)  # a chunk without ties takes the one-gather path
    for s in range(2):
        for b in range(5):
            assert got[s, b] == pytest.approx(roc_auc_score(y[idx[b]], scores[s, idx[b]]), abs=1e-12)
    np.testing.assert_allclose(untied[0], got[0], atol=1e-12)
    # weights that are no integers take the float64 sums: sklearn's sample-weighted AUROC
    frac = counts * rng.uniform(0.5, 1.5, size=counts.shape)
    got = auroc_weighted(scores, y, frac)
    for s in range(2):
        for b in range(5):
            assert got[s, b] == pytest.approx(roc_auc_score(y, scores[s], sample_weight=frac[b]), abs=1e-12)


# ----------------------------------------------------------------------------- baselines and dims
def test_diff_means_direction_and_separation(data):
    feats, y = data
    dirs = diff_means(feats, y)  # the concepts' difference of means, against numpy
    for s, x in feats.items():
        xn, yn = x.double().numpy(), y.numpy()
        v = xn[yn == 1].mean(0) - xn[yn == 0].mean(0)
        np.testing.assert_allclose(dirs.directions(s)[0].double().numpy(), v / np.linalg.norm(v), atol=1e-6)
    df = diff_means_separation(feats, y).set_index("site")
    assert df.loc["blocks.3.attn.hook_z[0]", "accuracy"] > 0.9
    assert abs(df.loc["blocks.0.attn.hook_z[0]", "accuracy"] - 0.5) < 0.1
    # independent out-of-fold computation for one site
    site, yn = "blocks.2.attn.hook_z[0]", y.numpy()
    x = feats[site].double().numpy()
    correct = 0
    for tr, te in make_folds(y, 5, 0):
        m1, m0 = x[tr][yn[tr] == 1].mean(0), x[tr][yn[tr] == 0].mean(0)
        u = (m1 - m0) / np.linalg.norm(m1 - m0)
        correct += ((x[te] @ u > (m1 + m0) @ u / 2) == (yn[te] == 1)).sum()
    assert df.loc[site, "accuracy"] == pytest.approx(correct / len(y))


def test_massive_dimension_found_and_dropped(data):
    feats, y = data
    md = massive_dimensions(feats, top=2)
    top = md[(md["site"] == "blocks.3.hook_resid_post") & (md["rank"] == 0)].iloc[0]
    assert top["dim"] == MASSIVE and top["var_fraction"] > 0.9
    dropped = drop_dimensions(feats, [MASSIVE])
    r = dropped["blocks.3.hook_resid_post"]
    assert r.shape == (len(y), D_RESID - 1)
    keep = [i for i in range(D_RESID) if i != MASSIVE]
    assert torch.equal(r, feats["blocks.3.hook_resid_post"][:, keep])
    assert torch.equal(dropped["blocks.3.attn.hook_z[0]"], feats["blocks.3.attn.hook_z[0]"])  # heads untouched
    assert massive_dimensions(dropped, 1).set_index("site").loc["blocks.3.hook_resid_post", "var_fraction"] < 0.2
    by_df = drop_dimensions(feats, md[md["rank"] == 0])  # the DataFrame form: per-site dims
    assert by_df["blocks.3.hook_resid_post"].shape[1] == D_RESID - 1
    res = probe_sweep({k: v for k, v in dropped.items() if "resid" in k}, y).set_index("site")
    assert res.loc["blocks.3.hook_resid_post", "accuracy"] > 0.9  # concept does not hinge on the massive dim
    assert res.loc["blocks.0.hook_resid_post", "accuracy"] < 0.6
    with pytest.raises(ValueError, match="out of range"):
        drop_dimensions(feats, [D_RESID])


def test_probe_transfer():
    train, ytr = planted(400, seed=1)
    test, yte = planted(300, seed=2, shift=0.3)  # same concept directions, shifted distribution
    t = probe_transfer(train, ytr, test, yte).set_index("site")
    s = probe_transfer(train, ytr, test, yte, method="sklearn").set_index("site")
    assert t.loc["blocks.3.hook_resid_post", "accuracy"] > 0.85
    assert abs(t.loc["blocks.0.hook_resid_post", "accuracy"] - 0.5) < 0.1
    assert (t["accuracy"] - s["accuracy"]).abs().max() <= 0.01
    assert (t["auroc"] - s["auroc"]).abs().max() <= 0.01
    with pytest.raises(ValueError, match="same sites"):
        probe_transfer(train, ytr, {k: v for k, v in list(test.items())[:2]}, yte)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda f, y: (f, y + 1), "labels must be 0/1"),
        (lambda f, y: (f, torch.zeros_like(y)), "only one class"),
        (lambda f, y: (f, torch.cat([torch.ones(3, dtype=torch.long), torch.zeros(len(y) - 3, dtype=torch.long)])),
         "fewer than n_folds"),
        (lambda f, y: (f, y[:-1]), "rows but labels has"),
        (lambda f, y: ({}, y), "features is empty"),
        (lambda f, y: ({**f, "blocks.0.hook_resid_post": torch.full_like(f["blocks.0.hook_resid_post"], float("nan"))}, y),
         "NaN"),
        (lambda f, y: ({"blocks.0.attn.hook_z": torch.randn(len(y), 2, 4)}, y), "split_heads"),
        (lambda f, y: (f, y.reshape(-1, 1)), "1-D"),
    ],
)
def test_errors(mutate, match):
    feats, y = planted(40, strengths=(1.0,))
    f, yy = mutate(feats, y)
    with pytest.raises(ValueError, match=match):
        probe_sweep(f, yy, n_folds=5)


def test_finiteness_check_survives_an_overflowing_sum():
    """The check sums each site first (fast); a sum that overflows on finite values falls back to the
    element-wise test instead of refusing the site; one inf or NaN anywhere is refused."""
    y = torch.arange(20) % 2
    huge = torch.full((20, 3), 3e38)  # finite, but its float32 sum is inf
    assert probes._check({"a": huge}, y)[0] == ["a"]
    for bad in (float("inf"), float("nan")):
        x = torch.randn(20, 3)
        x[7, 1] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            probes._check({"a": x}, y)


def test_bad_method(data):
    feats, y = data
    with pytest.raises(ValueError, match="method must be"):
        probe_sweep(feats, y, method="svm")


# ----------------------------------------------------------------------------- plots
def _grid_df(n_layers: int = 4, n_heads: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for layer in range(n_layers):
        for kind in ("resid_post", "mlp_out"):
            rows.append(dict(site=f"blocks.{layer}.hook_{kind}", kind=kind, layer=layer, head=pd.NA))
        for h in range(n_heads):
            rows.append(dict(site=f"blocks.{layer}.attn.hook_z[{h}]", kind="z", layer=layer, head=h))
    df = pd.DataFrame(rows)
    df["accuracy"] = rng.uniform(0.5, 1.0, len(df))
    df["accuracy_ci_low"], df["accuracy_ci_high"] = df["accuracy"] - 0.03, df["accuracy"] + 0.03
    df["head"] = df["head"].astype("Int64")
    return df


def test_probe_plots(tmp_path, sweeps):
    df = _grid_df()
    fig = plots.probe_accuracy_plot(df)
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == ["resid_post", "mlp_out", "z (best head)"]
    assert len(fig.data[0].x) == 4 and fig.data[0].error_y.array is not None
    best = df[df["kind"] == "z"].groupby("layer")["accuracy"].max().to_numpy()
    np.testing.assert_allclose(fig.data[2].y, best)
    assert any(s.line.dash == "dash" and s.y0 == 0.5 for s in fig.layout.shapes)  # chance line
    lexical = plots.probe_accuracy_plot(df, lexical={"accuracy": 0.81})
    assert any(s.line.dash == "dot" and s.y0 == 0.81 for s in lexical.layout.shapes)  # the bag-of-words line
    hm = plots.head_heatmap(df)
    assert np.asarray(hm.data[0].z).shape == (4, 3)
    assert np.asarray(hm.data[0].z)[2, 1] == pytest.approx(df.set_index("site").loc["blocks.2.attn.hook_z[1]", "accuracy"])
    real = plots.probe_accuracy_plot(sweeps["torch"][0], metric="auroc")
    assert len(real.data) == 2  # resid_post + z (best head)
    path = plots.save_html(fig, tmp_path / "sub" / "probe.html")
    html = path.read_text()
    assert not re.search(r"<script[^>]*src=\"http", html) and len(html) > 1_000_000  # plotly.js inlined
    with pytest.raises(ValueError, match="no per-head rows"):
        plots.head_heatmap(df[df["kind"] != "z"])


def test_lexical_baseline_equals_a_plain_sklearn_loop():
    """The bag-of-words baseline against an independent computation with the same folds."""
    from sklearn.feature_extraction.text import CountVectorizer

    from workbench.data import harmful_vs_benign
    from workbench.probes import lexical_baseline, make_folds

    recs = harmful_vs_benign(["twins_harmful"], ["twins_benign"], split="train", twins=True, n_per_class=60)
    prompts, y = [r.prompt for r in recs], np.array([r.label for r in recs])
    got = lexical_baseline(prompts, y, n_folds=5, seed=3)
    correct = np.zeros(len(y), bool)
    for tr, te in make_folds(y, 5, 3):
        vec = CountVectorizer(ngram_range=(1, 2))
        clf = LogisticRegression(max_iter=2000).fit(vec.fit_transform([prompts[i] for i in tr]), y[tr])
        correct[te] = clf.predict(vec.transform([prompts[i] for i in te])) == y[te]
    assert got["n"] == 120 and got["accuracy"] == pytest.approx(correct.mean())
    assert got["accuracy_ci_low"] <= got["accuracy"] <= got["accuracy_ci_high"] and 0 <= got["auroc"] <= 1
    with pytest.raises(ValueError, match="prompts but"):
        lexical_baseline(prompts[:3], y)
