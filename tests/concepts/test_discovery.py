"""Discovery methods: PCA matches scikit-learn, difference of means matches a direct computation,
PCA of the activation difference between two models (CAFT) matches PCA of the explicit difference."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from workbench import ActivationStore, Workbench
from workbench.concepts import (
    ConceptSet,
    activation_difference,
    diff_means,
    diff_means_between,
    paired_activations,
    pca,
    pca_diff,
    random_directions,
)

SITE = "blocks.1.hook_resid_post"
PROMPTS = ["Write a short poem about the sea.", "How do I pick a <lock>?", "What is the capital of France?",
           "Explain photosynthesis in two sentences.", "Give me a recipe for bread.", "How do I hack a wifi network?"]
RESPONSES = ["The sea is wide and deep, its waves roll on.", "I can't help with that & won't.", "Paris.",
             "Plants turn light into sugar. They release oxygen.", "Mix flour, water, yeast; bake.",
             "Sorry, I cannot assist with hacking."]


def assert_same_axes(ours: torch.Tensor, theirs: np.ndarray, atol=1e-4):
    theirs = torch.tensor(theirs, dtype=torch.float64)
    cos = (ours.double() @ theirs.T).diagonal()
    assert torch.allclose(cos.abs(), torch.ones_like(cos), atol=atol), cos


def anisotropic(n=400, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(6, 0.2, d)
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return ((torch.randn(n, d, generator=g, dtype=torch.float64) * scales) @ rot.T + 3.0).float()


@pytest.mark.parametrize("method", ["full", "lowrank"])
def test_pca_matches_sklearn(method):
    x = anisotropic()
    cs = pca(x, "blocks.0.hook_resid_post", k=5, method=method, niter=8)
    ref = PCA(n_components=5, svd_solver="full").fit(x.double().numpy())
    assert_same_axes(cs.directions("blocks.0.hook_resid_post"), ref.components_, atol=1e-3 if method == "lowrank" else 1e-5)
    assert np.allclose([c.score for c in cs], ref.explained_variance_ratio_, rtol=1e-3)
    if method == "full":  # sklearn's deterministic signs (largest entry positive) too
        D = cs.directions("blocks.0.hook_resid_post").double()
        assert torch.allclose(D, torch.tensor(ref.components_), atol=1e-5)


def test_pca_wide_and_drop_dims():
    x = anisotropic(n=20, d=40)  # N < d: the SVD branch
    cs = pca(x, "blocks.0.hook_resid_post", k=4)
    assert_same_axes(cs.directions("blocks.0.hook_resid_post"), PCA(4).fit(x.numpy()).components_, atol=1e-4)
    x = anisotropic()
    x[:, 7] *= 1000  # a massive dimension
    first = pca(x, "blocks.0.hook_resid_post", k=1)[0].direction
    assert first[7].abs() > 0.999
    dropped = pca(x, "blocks.0.hook_resid_post", k=3, drop_dims=[7]).directions("blocks.0.hook_resid_post")
    assert torch.all(dropped[:, 7] == 0)
    rest = torch.cat([x[:, :7], x[:, 8:]], 1)
    assert_same_axes(torch.cat([dropped[:, :7], dropped[:, 8:]], 1), PCA(3).fit(rest.numpy()).components_, atol=1e-4)


def test_diff_means_matches_direct():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 32, generator=g)
    y = torch.arange(60) % 3 == 0
    x[y] += torch.linspace(-1, 1, 32)
    cs = diff_means({"blocks.0.hook_resid_post": x}, y.long(), label="harmful - benign")
    direct = x[y].double().mean(0) - x[~y].double().mean(0)
    assert torch.allclose(cs[0].direction.double(), direct / direct.norm(), atol=1e-6)
    assert cs[0].label == "harmful - benign" and cs[0].provenance["method"] == "diff_means"
    proj = x.double() @ (direct / direct.norm())
    pooled = ((proj[y].var(correction=0) * y.sum() + proj[~y].var(correction=0) * (~y).sum()) / 60).sqrt()
    assert cs[0].score == pytest.approx(float((proj[y].mean() - proj[~y].mean()) / pooled), rel=1e-5)
    between = diff_means_between(x[y], x[~y], "blocks.0.hook_resid_post")
    assert torch.allclose(between[0].direction, cs[0].direction, atol=1e-6)
    with pytest.raises(ValueError, match="both classes"):
        diff_means({"blocks.0.hook_resid_post": x}, torch.ones(60))


def test_diff_means_from_store(tiny, tmp_path):
    labels = [1, 0, 0, 0, 0, 1]
    store = ActivationStore.build(tmp_path / "s", tiny, PROMPTS, [SITE, "blocks.0.attn.hook_z"], position="last",
                                  labels=labels, progress=False)
    cs = diff_means(store)
    assert cs.sites == [SITE, "blocks.0.attn.hook_z"]
    x = store.load(SITE).double()
    y = torch.tensor(labels).bool()
    direct = x[y].mean(0) - x[~y].mean(0)
    assert torch.allclose(cs.directions(SITE)[0].double(), direct / direct.norm(), atol=1e-6)
    prov = cs[0].provenance
    assert prov["model_id"] == "tiny-llama" and prov["dataset_fingerprint"] == store.manifest["dataset_fingerprint"]
    assert cs.directions("blocks.0.attn.hook_z").shape == (1, 64)  # [H, dh] flattened
    cs.check(tiny)


@pytest.fixture(scope="module")
def finetuned():
    """A 'fine-tuned' tiny model: the same random init with a low-rank change to layer 0's MLP output."""
    wb = Workbench.load("tiny-llama")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in wb.model.named_parameters():
            if "layers.0." in name and "down_proj" in name:
                p.add_(0.5 * torch.outer(torch.randn(p.shape[0], generator=g), torch.randn(p.shape[1], generator=g)) / p.shape[1])
                break
        else:
            raise AssertionError("no down_proj found")
    return wb


def test_pca_of_difference_matches_sklearn(tiny, finetuned):
    cs = pca_diff(finetuned, tiny, PROMPTS, RESPONSES, sites=SITE, k=4, niter=6)
    a, b, ri = paired_activations(finetuned, tiny, PROMPTS, SITE, RESPONSES)
    assert ri.max() == len(PROMPTS) - 1 and a[SITE].shape[0] == len(ri)
    diff = (a[SITE] - b[SITE]).double()
    assert diff.abs().max() > 1e-3  # the models really differ
    ref = PCA(n_components=4, svd_solver="full").fit(diff.numpy())
    assert_same_axes(cs.directions(SITE), ref.components_, atol=1e-3)
    assert np.allclose([c.score for c in cs], ref.explained_variance_ratio_, rtol=1e-3)
    prov = cs[0].provenance
    assert prov["method"] == "pca_diff" and prov["params"]["position"] == "response"
    # the rank-1 weight change shows up as a dominant first component
    assert cs[0].score > 0.5
    # response tokens only: fewer rows than all tokens
    n_all = sum(tiny.tokenize([p], [r]).attention_mask.sum() for p, r in zip(PROMPTS, RESPONSES))
    assert diff.shape[0] < n_all


def test_difference_from_stores_checks_rows(tiny, finetuned, tmp_path):
    sa = ActivationStore.build(tmp_path / "ft", finetuned, PROMPTS, [SITE], position="response", responses=RESPONSES,
                               progress=False)
    sb = ActivationStore.build(tmp_path / "base", tiny, PROMPTS, [SITE], position="response", responses=RESPONSES,
                               progress=False)
    d, info = activation_difference(sa, sb)
    assert torch.allclose(d[SITE], sa.load(SITE) - sb.load(SITE))
    cs = pca_diff(sa, sb, k=3)
    assert len(cs) == 3 and cs[0].provenance["dataset_fingerprint"] == sa.manifest["dataset_fingerprint"]
    other = ActivationStore.build(tmp_path / "other", tiny, PROMPTS[::-1], [SITE], position="response",
                                  responses=RESPONSES[::-1], progress=False)
    with pytest.raises(ValueError, match="different datasets"):
        activation_difference(sa, other)
    with pytest.raises(ValueError, match="responses"):
        pca_diff(finetuned, tiny, PROMPTS, None, sites=SITE)


def test_random_baseline():
    cs = random_directions(SITE, 64, k=5)
    D = cs.directions(SITE)
    assert isinstance(cs, ConceptSet) and torch.allclose(D @ D.T, torch.eye(5), atol=1e-5)
