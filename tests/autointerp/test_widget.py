"""The labeling widget, driven headlessly through its buttons' callbacks."""

import pytest
import torch

from workbench.autointerp import KeywordScorer, LabelingWidget, OfflineExplainer, TokenContexts, explain_and_score
from workbench.concepts import Concept, ConceptSet

SITE = "blocks.0.hook_resid_post"


def contexts():
    toks, rows = [], []
    g = torch.Generator().manual_seed(0)
    for i in range(40):
        words = [" <b>the", " bomb" if i % 2 else " bread", " now", " please"]
        toks.append(words)
        for w in words:
            x = torch.randn(4, generator=g) * 0.1
            x[0] += 3.0 * (w == " bomb")
            x[1] += 3.0 * (w == " bread")
            rows.append(x)
    return TokenContexts.from_tokens(SITE, toks, torch.stack(rows), labels=[i % 2 for i in range(40)])


def test_widget_pages_labels_and_saves(tmp_path):
    ctx = contexts()
    cs = ConceptSet([Concept("c0", SITE, torch.eye(4)[0]), Concept("c1", SITE, torch.eye(4)[1]),
                     Concept("c2", "blocks.1.hook_resid_post", torch.eye(4)[2])])
    explain_and_score(cs, ctx, OfflineExplainer(min_examples=1), KeywordScorer(), n_explain=5, n_test=5)
    path = tmp_path / "labelled.safetensors"
    w = LabelingWidget(cs, path, contexts=ctx, n_examples=3)
    assert "1 / 3" in w.header.value and "bomb" in w.suggestion.value
    assert "&lt;b&gt;the" in w.examples.value and "<b>the" not in w.examples.value  # escaped
    assert w.prev_button.disabled and not w.next_button.disabled

    w.accept_button.click()                      # take the autointerp label for c0
    assert w.label.value == cs["c0"].meta["autointerp"]["label"]
    w.use.value = True
    w.next_button.click()                        # -> c1 (auto-saves c0)
    assert w.index == 1 and w.label.value == "" and not w.use.value
    w.label.value = "  baking  "
    w.next_button.click()                        # -> c2: another site, no examples
    assert "no examples" in w.examples.value and w.next_button.disabled
    w.prev_button.click()                        # back to c1: its label was kept
    assert w.label.value == "baking"
    w.label.value = "bread & baking"
    w.save_button.click()
    assert "saved" in w.status.value and path.is_file()

    back = ConceptSet.load(path)
    assert [c.label for c in back] == [cs["c0"].meta["autointerp"]["label"], "bread & baking", ""]
    assert [c.selected for c in back] == [True, False, False]
    assert back.for_ablation().names == ["c0"]
    assert back["c1"].meta["autointerp"]["detection"]["auroc"] == pytest.approx(1.0)
    # a fresh widget on the saved file shows the saved choices
    w2 = LabelingWidget(back, path, contexts=ctx)
    assert w2.label.value == back["c0"].label and w2.use.value
    bundle = w2._repr_mimebundle_()  # Jupyter renders the widget's box (its model id), not text
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == w2.box.model_id


def test_widget_refuses_empty_set(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        LabelingWidget(ConceptSet(), tmp_path / "x.safetensors")
