"""Sparse autoencoders (sae-lens) on real activations of the default model; CAFT's latent choices."""

import json

import pytest
import torch

from workbench import ActivationStore, Workbench
from workbench.concepts import (
    ConceptSet,
    WidthMismatch,
    common_prefix_length,
    latent_attribution,
    latents_by_attribution,
    latents_by_diff_encoding,
    latents_by_mean_diff,
    load_sae,
    paired_activations,
    saes_dir,
    train_sae,
)
from workbench.concepts.sae_cli import cli_main
from workbench.concepts.sae_data import ActivationSource, row_positions
from workbench.data import load_dataset

SITE = "blocks.15.hook_resid_post"  # a middle layer of the 30


@pytest.fixture(scope="module")
def real_store(wb, tmp_path_factory):
    """~3k tokens: benign instructions with (shortened) reference answers, and harmful requests."""
    benign = load_dataset("benign_instructions", split="train")[:16]
    harmful = load_dataset("advbench", split="train")[:16]
    prompts = [r.prompt[:300] for r in benign] + [r.prompt for r in harmful]
    responses = [r.response[:400] for r in benign] + ["Sure, here is how."] * len(harmful)
    labels = [0] * len(benign) + [1] * len(harmful)
    store = ActivationStore.build(tmp_path_factory.mktemp("sae") / "store", wb, prompts, [SITE], position="all",
                                  labels=labels, responses=responses, progress=False)
    assert 2000 < len(store) < 6000
    return store


@pytest.fixture(scope="module")
def trained(real_store, wb, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae") / "smollm2-L15-test"
    sae = train_sae(real_store, SITE, out, d_sae=576, k=32, total_tokens=20480, batch_size=256, lr=3e-3,
                    skip_first=common_prefix_length(wb), eval_fraction=0.2, progress=False)
    return sae, out


@pytest.mark.slow
def test_sae_reconstructs_real_activations(trained, real_store, wb):
    sae, out = trained
    m = sae.metrics
    # well above the mean baseline (EV 0) on held-out records, with and without the massive dimension
    assert m["massive_dims"] == [507]
    assert m["explained_variance_without_massive"] > 0.4, m
    assert m["explained_variance"] > 0.4, m
    assert m["l0"] == pytest.approx(32, abs=0.5) and m["dead_latents"] < 576 and m["tokens_per_s"] > 0
    # the saved folder: sae-lens files + the workbench manifest
    assert {p.name for p in out.iterdir()} >= {"cfg.json", "sae_weights.safetensors", "workbench.json"}
    manifest = json.loads((out / "workbench.json").read_text())
    assert manifest["model_id"] == wb.model_id and manifest["site"] == SITE
    assert manifest["dataset_fingerprint"] == real_store.manifest["dataset_fingerprint"]
    assert manifest["params"]["normalize_activations"] == "expected_average_only_in"  # "auto" with few rows
    # recompute EV on the held-out rows from the reloaded SAE, by hand
    loaded = load_sae(out, wb=wb)
    src = ActivationSource(real_store, SITE, eval_fraction=0.2, skip_first=common_prefix_length(wb))
    x = src.eval_rows()
    with torch.no_grad():
        xh = loaded.sae.decode(loaded.sae.encode(x))
    keep = torch.ones(576, dtype=torch.bool)
    keep[507] = False
    ev = 1 - ((x - xh)[:, keep] ** 2).sum() / ((x - x.mean(0))[:, keep] ** 2).sum()
    assert float(ev) == pytest.approx(m["explained_variance_without_massive"], abs=1e-4)


@pytest.mark.slow
def test_width_checked_on_load(trained, tiny):
    _, out = trained
    with pytest.raises(WidthMismatch, match="576"):
        load_sae(out, wb=Workbench.load("tiny-llama-L16"))  # has the site, 64 wide
    with pytest.raises(KeyError, match="Unknown site"):
        load_sae(out, wb=tiny)  # 2 layers: no blocks.15


@pytest.mark.slow
def test_source_splits_by_record(real_store):
    ri = real_store.record_index
    pos = row_positions(ri)
    assert pos[0] == 0 and (pos[1:][ri[1:] != ri[:-1]] == 0).all()
    src = ActivationSource(real_store, SITE, eval_fraction=0.25, skip_first=5)
    n_eval = int(((src.eval_mask[ri]) & (pos >= 5)).sum())
    assert src.eval_rows().shape[0] == n_eval
    assert src.count_train_rows() == int(((~src.eval_mask[ri]) & (pos >= 5)).sum())
    batches = list(src.batches(64, loop=False))
    assert sum(b.shape[0] for b in batches) == src.count_train_rows()


@pytest.mark.slow
def test_latent_choice_by_mean_diff(trained, real_store):
    sae, _ = trained
    x, y = real_store.load(SITE), real_store.labels
    pos = row_positions(real_store.record_index)
    x, y = x[pos >= 24], y[pos >= 24]
    cs = latents_by_mean_diff(sae, x[y == 1], x[y == 0], top=5)
    direct = sae.encode(x[y == 1]).mean(0) - sae.encode(x[y == 0]).mean(0)
    assert [c.meta["sae_latent"] for c in cs] == direct.topk(5).indices.tolist()
    assert all(c.score > 0 for c in cs) and cs[0].provenance["method"] == "sae_mean_diff"
    j = cs[0].meta["sae_latent"]
    assert torch.allclose(cs[0].direction, sae.W_dec[j] / sae.W_dec[j].norm(), atol=1e-6)
    assert isinstance(cs, ConceptSet) and cs.widths() == {SITE: 576}


# ---------------------------------------------------------------- CAFT choices on the tiny model
TINY_SITE = "blocks.0.hook_resid_post"
PROMPTS = ["Tell me a joke.", "How do I cook rice?", "Name a planet."]
RESPONSES = ["Why did the chicken cross the road?", "Boil water, add rice, wait.", "Mars."]


@pytest.fixture(scope="module")
def tiny_sae():
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=64, d_sae=128, k=8))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
    return sae


def test_latent_choice_by_diff_encoding(tiny, tiny_sae):
    ft = Workbench.load("tiny-llama")
    with torch.no_grad():
        next(p for n, p in ft.model.named_parameters() if "layers.0." in n and "down_proj" in n).mul_(1.5)
    a, b, _ = paired_activations(ft, tiny, PROMPTS, TINY_SITE, RESPONSES)
    cs = latents_by_diff_encoding(tiny_sae, a, b, top=4, site=TINY_SITE)
    direct = tiny_sae.encode(a[TINY_SITE] - b[TINY_SITE]).sum(0).detach()
    assert [c.meta["sae_latent"] for c in cs] == direct.topk(4).indices.tolist()
    assert [c.score for c in cs] == pytest.approx(direct.topk(4).values.tolist(), rel=1e-5)


def test_attribution_matches_the_loss_change(tiny, tiny_sae):
    """attribution_j * n_tokens = -dL/d(eps) when latent j's decoded contribution is scaled by (1 - eps)."""
    attr = latent_attribution(tiny_sae, tiny, PROMPTS, RESPONSES, site=TINY_SITE, loss="response_nll", batch_size=8)
    assert attr.shape == (128,) and attr.abs().sum() > 0
    assert all(p.grad is None for p in tiny.model.parameters())  # no parameter gradients left behind
    batch = tiny.tokenize(PROMPTS, RESPONSES)
    mask = batch.response_mask.bool()
    j = int(attr.abs().argmax())

    def loss_with(eps):
        def hook(t, site):
            f = tiny_sae.encode(t)[..., j:j + 1].detach()
            return t - eps * f * tiny_sae.W_dec[j].detach() * mask.unsqueeze(-1)
        with torch.no_grad(), tiny.hooks({TINY_SITE: hook}):
            logits = tiny.backend.run(batch.input_ids, batch.attention_mask).logits
        lp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
        m = mask[:, 1:]
        return float(-(lp * m).sum() / m.sum())

    eps = 1e-3
    slope = (loss_with(eps) - loss_with(-eps)) / (2 * eps)
    assert -slope == pytest.approx(float(attr[j]) * int(mask.sum()), rel=0.05, abs=1e-6)
    cs = latents_by_attribution(tiny_sae, tiny, PROMPTS, RESPONSES, top=3, site=TINY_SITE)
    assert cs[0].meta["sae_latent"] == j and cs[0].provenance["params"]["loss"] == "response_nll"
    with pytest.raises(ValueError, match="responses"):
        latent_attribution(tiny_sae, tiny, PROMPTS, None, site=TINY_SITE)


@pytest.mark.slow
def test_cli_trains_from_a_store(real_store, tmp_path, capsys):
    out = tmp_path / "cli-sae"
    assert cli_main(["train", "--store", str(real_store.path), "--site", SITE, "--out", str(out), "--d-sae", "256",
                     "--k", "16", "--tokens", "2048", "--batch-size", "128", "--skip-first", "24",
                     "--arch", "batchtopk"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["d_sae"] == 256 and "explained_variance_without_massive" in printed
    manifest = json.loads((out / "workbench.json").read_text())
    assert manifest["params"]["architecture"] == "batchtopk" and manifest["metrics"]["d_sae"] == 256
    assert load_sae(out).d_sae == 256


@pytest.mark.slow
def test_shipped_sae(wb, real_store):
    """The SAE in saes/ loads, fits the default model, and reconstructs these (unseen) activations."""
    folders = sorted(p for p in saes_dir().iterdir() if (p / "workbench.json").is_file())
    assert folders, "no trained SAE under saes/"
    sae = load_sae(folders[0], wb=wb)
    assert sae.site == SITE and sae.metrics["explained_variance_without_massive"] > 0.5
    x = real_store.load(SITE)[row_positions(real_store.record_index) >= common_prefix_length(wb)]
    m = sae.metrics_on(x, massive=[507])
    assert m["explained_variance_without_massive"] > 0.5, m
