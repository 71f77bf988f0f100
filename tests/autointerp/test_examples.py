"""Top-activating examples: ranking, token alignment with the model, escaped HTML, plotly view."""

import pytest
import torch

from workbench import ActivationStore
from workbench.autointerp import (
    SAELatent,
    TokenContexts,
    concept_examples,
    example_html,
    examples_html,
    projection_figure,
    top_examples,
)
from workbench.autointerp.examples import Example
from workbench.concepts import Concept

SITE = "blocks.1.hook_resid_post"
PROMPTS = ["<script>alert('x')</script> what is this?", "Tell me about the <b>sea</b> & sky.",
           "How are you today?", "Write a haiku about bread."]


def synthetic(n=12, d=4):
    toks = [[f" w{i}", " the", " cat", f" x{i}"] for i in range(n)]
    acts = torch.zeros(n * 4, d)
    for i in range(n):
        acts[i * 4 + 2, 0] = float(i) - 5  # the "cat" token carries record i's value
    return TokenContexts.from_tokens(SITE, toks, acts, labels=[i % 2 for i in range(n)])


def test_ranking_and_windows():
    ctx = synthetic()
    e0 = torch.eye(4)[0]
    top = top_examples(ctx, e0, n=3)
    assert [e.record for e in top] == [11, 10, 9]
    assert top[0].score == 6.0 and top[0].tokens[top[0].peak] == " cat"
    bottom = top_examples(ctx, e0, n=2, side="bottom")
    assert [e.record for e in bottom] == [0, 1] and bottom[0].score == -5.0
    narrow = top_examples(ctx, e0, n=1, window=(1, 0))[0]
    assert narrow.tokens == [" the", " cat"] and narrow.peak == 1
    assert top_examples(ctx, e0, n=2, exclude=[11])[0].record == 10


def test_html_escapes_markup():
    ex = Example(record=0, score=2.0, peak=1, tokens=["<script>", "alert('x')", "</script>", " & <b>"],
                 values=[0.1, 2.0, -1.0, 0.0], label="<i>1</i>", id="a<b>")
    out = example_html(ex)
    assert "<script>" not in out and "</script>" not in out and "<b>" not in out and "<i>" not in out
    assert "&lt;script&gt;" in out and "&amp;" in out and "&lt;i&gt;1&lt;/i&gt;" in out
    page = examples_html([ex], [ex], title="<script>t</script>", subtitle="<img src=x>")
    assert "<script>" not in page and "<img" not in page
    assert "rgba(220,38,38" in out and "rgba(37,99,235" in out  # positive red, negative blue


def test_contexts_from_model_and_store(tiny, tmp_path):
    ctx = TokenContexts.capture(tiny, PROMPTS, SITE, labels=[1, 0, 0, 0])
    assert len(ctx) == 4 and ctx.acts.shape[1] == 64
    for i, p in enumerate(PROMPTS):  # the tokens reassemble the rendered chat text
        assert ctx.text(i) == tiny.tokenize([p]).texts[0]
    # the chat template's common prefix (system prompt) is not scored
    n_prefix = int((~ctx.scored[: int(ctx.offsets[1])]).sum())
    assert n_prefix > 5 and "".join(ctx.tokens[0][:n_prefix]).startswith("<|im_start|>system")
    c = Concept("c", SITE, torch.randn(64, generator=torch.Generator().manual_seed(0)))
    view = concept_examples(ctx, c, n=4)
    assert len(view.top) == 4 and len(view.bottom) == 4
    page = view._repr_html_()
    assert "<script" not in page and "</script" not in page and "<b>sea" not in page and "&lt;" in page
    # values equal the projection of the captured activations
    acts = tiny.capture(PROMPTS[:1], [SITE], position="all", progress=False)[SITE]
    ex = view.top[0]
    assert max(ex.values) == pytest.approx(float((acts @ c.direction).max()) if ex.record == 0 else max(ex.values))
    store = ActivationStore.build(tmp_path / "s", tiny, PROMPTS, [SITE], position="all", labels=[1, 0, 0, 0],
                                  progress=False)
    ctx2 = TokenContexts.from_store(store, tiny, PROMPTS)
    assert torch.allclose(ctx2.acts, ctx.acts, atol=1e-5) and ctx2.tokens == ctx.tokens
    with pytest.raises(ValueError, match="prompts"):
        TokenContexts.from_store(store, tiny, PROMPTS[:2])
    fig = projection_figure(ctx, c)
    assert len(fig.data) == 2 and {t.name for t in fig.data} == {"harmful (1)", "benign (0)"}
    fig2 = projection_figure(ctx, c, Concept("d", SITE, torch.ones(64)), reduce="max")
    assert fig2.data[0].type == "scatter"
    assert all("<script>" not in t for tr in fig2.data for t in tr.text)


def test_sae_latent_feature():
    class Toy(torch.nn.Module):  # the sae-lens interface the examples use: encode + parameters
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.eye(4))

        def encode(self, x):
            return torch.relu(x @ self.w)

    ctx = synthetic()
    top = top_examples(ctx, SAELatent(Toy(), 0), n=2)
    assert [e.record for e in top] == [11, 10] and top[0].score == 6.0
