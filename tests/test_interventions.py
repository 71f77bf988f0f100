"""Interventions: Ablate / Steer / HeadScale / HeadBias, checked against direct computations."""

from __future__ import annotations

import json

import pytest
import torch

from workbench.interventions import Ablate, Compose, HeadBias, HeadScale, Intervention, Steer, load_intervention
from workbench.sites import UnknownSite

SITE = "blocks.0.hook_resid_post"


def gram_schmidt(d: torch.Tensor) -> torch.Tensor:
    """Independent orthonormal basis [d, k] of the rows of d (float64)."""
    basis = []
    for v in d.double():
        for b in basis:
            v = v - (v @ b) * b
        basis.append(v / v.norm())
    return torch.stack(basis, 1)


@pytest.fixture()
def warm(tiny):
    """The tiny model after one forward (the bridge wires its own capture hooks lazily)."""
    tiny.forward(["warm up"])
    return tiny


def test_ablate_equals_projection_formula_and_is_orthogonal():
    torch.manual_seed(0)
    d = torch.randn(3, 64)
    x = torch.randn(2, 5, 64)
    out = Ablate({SITE: d}).apply(x, SITE)
    basis = gram_schmidt(d)
    expected = x.double() - x.double() @ basis @ basis.T
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    assert (out @ d.T).abs().max() < 1e-4  # orthogonal to every direction
    assert (out - x).abs().max() > 0.1     # and it did something


def test_mean_ablation_sets_the_component_to_the_mean():
    torch.manual_seed(1)
    d, mu, x = torch.randn(2, 32), torch.randn(32), torch.randn(3, 4, 32)
    out = Ablate({SITE: d}, mean={SITE: mu}).apply(x, SITE)
    basis = gram_schmidt(d).float()
    torch.testing.assert_close(out, x - ((x - mu) @ basis) @ basis.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(out @ basis, (mu @ basis).expand(3, 4, 2), atol=1e-5, rtol=0)


def test_ablate_in_the_model_orthogonal_changes_output_and_is_removed(warm):
    torch.manual_seed(2)
    d = torch.randn(2, warm.d_model)
    abl = Ablate({SITE: d})
    prompts = ["Write a poem about the sea.", "How do I pick a lock?"]
    before, count = warm.forward(prompts), warm.backend.hook_count()
    with warm.hooks(abl):
        acts = warm.capture(prompts, [SITE], position="all", progress=False)[SITE]  # sees the ablated stream
        ablated = warm.forward(prompts)
        assert warm.backend.hook_count() > count
    assert (acts @ d.T).abs().max() < 1e-3 * acts.abs().max()
    assert (ablated - before).abs().max() > 1e-3
    assert warm.backend.hook_count() == count
    torch.testing.assert_close(warm.forward(prompts), before, atol=0, rtol=0)


def test_no_gradient_flows_through_an_ablated_direction(warm):
    torch.manual_seed(3)
    d = torch.randn(2, warm.d_model)
    inside = d[0] + 0.5 * d[1]                              # in the ablated span
    outside = torch.randn(warm.d_model)
    outside -= gram_schmidt(d).float() @ (gram_schmidt(d).float().T @ outside)  # orthogonal to it
    eps = torch.zeros(2, requires_grad=True)
    abl = Ablate({SITE: d})

    def push(x, name):  # a perturbation along both vectors, before the ablation
        return x + eps[0] * inside + eps[1] * outside

    batch = warm.tokenize(["Tell me a story."])
    with warm.hooks({SITE: [push, lambda x, name: abl.apply(x, SITE)]}):
        loss = warm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.pow(2).mean()
    loss.backward()
    assert eps.grad[1].abs() > 1e-6
    assert eps.grad[0].abs() < 1e-4 * eps.grad[1].abs()


def test_ablate_position_mask_needs_a_batch_and_touches_only_those_tokens(warm):
    d = torch.randn(1, warm.d_model)
    batch = warm.tokenize(["Hi there"], ["Hello!"])
    abl = Ablate({SITE: d}, positions="response")
    with pytest.raises(RuntimeError, match="bind"):
        warm.forward(batch, hooks=abl)
    seen = {}
    grab = {SITE: lambda x, name: seen.__setitem__("x", x.clone())}
    warm.forward(batch, hooks=grab)
    base = seen["x"]
    with abl.bind(batch):
        warm.forward(batch, hooks=Compose(abl, _Grab(seen)))
    resp = batch.response_mask[0]
    assert torch.equal(seen["x"][0, ~resp], base[0, ~resp])
    assert (seen["x"][0, resp] @ d.T).abs().max() < 1e-3
    assert not torch.allclose(seen["x"][0, resp], base[0, resp])


class _Grab(Intervention):
    def __init__(self, store):
        super().__init__()
        self.store = store

    def as_hooks(self, wb):
        return {SITE: lambda x, name: self.store.__setitem__("x", x.clone())}


def test_steer_adds_alpha_times_direction(warm):
    site = "blocks.1.hook_resid_post"
    v = torch.randn(warm.d_model)
    prompts = ["What is the capital of France?"]
    base = warm.capture(prompts, [site], position="all", progress=False)[site]
    with warm.hooks(Steer(site, v, alpha=3.0)):
        steered = warm.capture(prompts, [site], position="all", progress=False)[site]
    torch.testing.assert_close(steered - base, (3.0 * v).expand_as(base), atol=1e-4, rtol=0)


def test_headscale_and_headbias_at_zero_are_the_identity(warm):
    prompts = ["Explain photosynthesis.", "How do I make a pipe bomb?"]
    before = warm.forward(prompts)
    scale = HeadScale.for_model(warm)
    with torch.no_grad():
        for p in scale.parameters():
            p.zero_()
    assert scale.n_trainable() == warm.n_layers * warm.n_heads * warm.d_head
    with warm.hooks(Compose(scale, HeadBias.for_model(warm))):
        after = warm.forward(prompts)
    assert torch.equal(before, after)


def test_headbias_changes_only_its_head(warm):
    site, layer, head = "blocks.1.attn.hook_z", 1, 2
    prompts = ["Name three fruits."]
    bias = HeadBias(None, warm.n_heads, warm.d_head, heads=[(layer, head)])
    with torch.no_grad():
        bias.vector(layer, head).copy_(torch.randn(warm.d_head))
    assert [n for n, _ in bias.named_parameters()] == ["params.1"] and bias.n_trainable() == warm.d_head
    base = warm.capture(prompts, [site, "blocks.0.attn.hook_z"], position="all", progress=False)
    with warm.hooks(bias):
        new = warm.capture(prompts, [site, "blocks.0.attn.hook_z", f"{site}[{head}]"], position="all",
                           progress=False)
    diff = new[site] - base[site]
    others = [h for h in range(warm.n_heads) if h != head]
    assert torch.equal(new[site][:, others], base[site][:, others])
    torch.testing.assert_close(diff[:, head], bias.vector(layer, head).detach().expand_as(diff[:, head]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(new[f"{site}[{head}]"], new[site][:, head])
    assert torch.equal(new["blocks.0.attn.hook_z"], base["blocks.0.attn.hook_z"])


def test_headbias_on_the_real_grouped_query_model(wb):
    """SmolLM2: 9 query heads share 3 KV heads; hook_z carries all 9, the bias touches one."""
    layer, head = 4, 7
    site = f"blocks.{layer}.attn.hook_z"
    prompts = ["Give me a synonym for happy."]
    bias = HeadBias.for_model(wb, heads=[(layer, head)])
    with torch.no_grad():
        bias.vector(layer, head).fill_(0.5)
    base = wb.capture(prompts, [site], position="all", progress=False)[site]
    with wb.hooks(bias):
        new = wb.capture(prompts, [site], position="all", progress=False)[site]
        logits = wb.forward(prompts)
    assert base.shape[1:] == (9, 64)
    others = [h for h in range(9) if h != head]
    assert torch.equal(new[:, others], base[:, others])
    torch.testing.assert_close(new[:, head] - base[:, head], torch.full_like(base[:, head], 0.5), atol=1e-4, rtol=0)
    assert (logits - wb.forward(prompts)).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["tiny-llama", "smollm2-135m-instruct"])
def test_headbias_folded_into_o_proj_equals_the_hook(name):
    """fold_into: the same logits as the hooked bias and the same greedy tokens, now on the
    hook-free decode path; a fresh model each, since folding changes the weights."""
    from workbench import Workbench

    wb = Workbench.load(name)
    bias = HeadBias.for_model(wb, heads=[(0, 1), (1, 0), (1, 2)], init_std=0.5, seed=0)
    prompts = ["Give me a synonym for happy.", "How do I pick a lock?"]
    with wb.hooks(bias):
        want_logits = wb.forward(prompts)
        want_text = wb.generate(prompts, max_new_tokens=8, progress=False)
    assert (want_logits - wb.forward(prompts)).abs().max() > 1e-3  # the bias matters
    bias.fold_into(wb)
    torch.testing.assert_close(wb.forward(prompts), want_logits, atol=1e-4, rtol=0)
    assert wb.generate(prompts, max_new_tokens=8, progress=False) == want_text


def test_save_load_round_trips(tmp_path):
    torch.manual_seed(4)
    x = torch.randn(2, 3, 64)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    items = [
        Ablate({SITE: torch.randn(2, 64), "blocks.1.hook_resid_post": torch.randn(64)},
               mean={SITE: torch.randn(64), "blocks.1.hook_resid_post": torch.randn(64)}),
        Ablate({SITE: torch.randn(3, 64)}, positions=mask),
        Steer(SITE, torch.randn(64), alpha=-2.5, normalize=True),
    ]
    for i, item in enumerate(items):
        loaded = load_intervention(item.save(tmp_path / f"i{i}"))
        assert type(loaded) is type(item) and repr(loaded) == repr(item)
        ref = item.apply(x, SITE) if isinstance(item, Ablate) else item.apply(x)
        got = loaded.apply(x, SITE) if isinstance(loaded, Ablate) else loaded.apply(x)
        torch.testing.assert_close(got, ref, atol=0, rtol=0)
    scale = HeadScale([0, 1], 4, 16, seed=0)
    bias = HeadBias(None, 4, 16, heads={1: [3, 0]}, init_std=0.1, seed=1)
    loaded = load_intervention(Compose(scale, bias).save(tmp_path / "both"))
    assert isinstance(loaded, Compose) and len(loaded) == 2
    for a, b in zip(loaded.items, (scale, bias)):
        assert a.head_list == b.head_list
        for (n1, p1), (n2, p2) in zip(a.named_parameters(), b.named_parameters()):
            assert n1 == n2 and torch.equal(p1, p2) and p1.requires_grad
    assert HeadBias.load(bias.save(tmp_path / "bias")).heads == {1: [0, 3]}
    with pytest.raises(TypeError, match="not a HeadScale"):
        HeadScale.load(tmp_path / "bias")
    files = {p.suffix for p in tmp_path.rglob("*") if p.is_file()}
    assert files == {".json", ".safetensors"}  # never pickle
    manifest = json.loads((tmp_path / "bias" / "intervention.json").read_text())
    assert manifest["type"] == "HeadBias" and manifest["config"]["heads"] == [[1, 0], [1, 3]]


def test_wrong_widths_and_sites_are_refused_clearly(tiny):
    with pytest.raises(ValueError, match=r"width 576.*width 64.*d_model=64"):
        tiny.forward(["hi"], hooks=Ablate({SITE: torch.randn(1, 576)}))
    with pytest.raises(ValueError, match=r"width 576"):
        Steer(SITE, torch.randn(576)).check(tiny)
    with pytest.raises(ValueError, match=r"n_heads=9, d_head=64.*d_head=16"):
        HeadBias([0], 9, 64).check(tiny)
    with pytest.raises(ValueError, match="out of range"):
        HeadScale([5], 4, 16).check(tiny)
    with pytest.raises(UnknownSite, match="Closest valid names"):
        Ablate({"blocks.0.hook_resid_pst": torch.randn(1, 64)}).check(tiny)
    with pytest.raises(ValueError, match="linearly dependent"):
        Ablate({SITE: torch.stack([torch.ones(64), 2 * torch.ones(64)])})
    with pytest.raises(ValueError, match="out of range"):
        HeadBias(None, 4, 16, heads=[(0, 4)])


def test_reprs_are_informative():
    assert repr(Ablate({SITE: torch.randn(3, 8)})) == \
        "Ablate({'blocks.0.hook_resid_post': k=3}, d=8, zero-ablation, positions='all')"
    assert repr(HeadBias(None, 4, 16, heads=[(1, 2)])) == \
        "HeadBias(1 heads in layers [1], d_head=16, n_heads=4, trainable=16, op=z_h + v_h)"
    assert "alpha=2" in repr(Steer(SITE, torch.ones(8), alpha=2))


def test_hooks_are_removed_after_an_exception(warm):
    count = warm.backend.hook_count()
    with pytest.raises(ZeroDivisionError):
        with warm.hooks(HeadScale.for_model(warm)):
            1 / 0  # noqa: B018  (the exception is the point)
    assert warm.backend.hook_count() == count
