"""The wrapper on the real default model, checked against a plain HF forward."""

import pytest
import torch

from workbench.sites import UnknownSite


def _hf_hidden(hf_model, batch):
    with torch.no_grad():
        out = hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    return out.logits, out.hidden_states


def test_bridge_and_wrapper_logits_equal_plain_hf(wb, hf_model, prompts):
    batch = wb.tokenize(prompts)
    ref, _ = _hf_hidden(hf_model, batch)
    m = batch.attention_mask.bool()
    assert torch.equal(wb.forward(batch)[m], ref[m])
    # and through TransformerLens' own forward of the bridge, one unpadded prompt
    single = wb.tokenize(prompts[:1])
    with torch.no_grad():
        tl = wb.bridge(single.input_ids)
    assert torch.allclose(tl, _hf_hidden(hf_model, single)[0], atol=1e-5)


@pytest.mark.parametrize("n", [4, 1], ids=["left-padded batch", "single prompt"])
def test_resid_post_equals_hf_hidden_states(wb, hf_model, n, prompts):
    prompts = prompts[:n] if n > 1 else prompts[2:3]
    batch = wb.tokenize(prompts)
    sites = [f"blocks.{l}.hook_resid_post" for l in range(wb.n_layers)]
    acts = wb.capture(prompts, sites, position="all", batch_size=len(prompts), progress=False)
    _, hidden = _hf_hidden(hf_model, batch)
    m = batch.attention_mask.bool()
    for l in range(wb.n_layers - 1):  # HF applies the final norm to its last entry
        torch.testing.assert_close(acts[sites[l]], hidden[l + 1][m], rtol=0, atol=1e-5)
    last = wb.capture(prompts, sites[:3], position="last", progress=False)
    torch.testing.assert_close(last[sites[2]], hidden[3][:, -1], rtol=0, atol=1e-5)


def test_positions_shapes(wb, prompts):
    acts = {p: wb.capture(prompts[:2], ["blocks.4.hook_resid_post", "blocks.4.attn.hook_z[1]"], position=p,
                          progress=False) for p in ("last", "mean", "post_instruction", "post_instruction_mean")}
    assert acts["last"]["blocks.4.hook_resid_post"].shape == (2, 576)
    assert acts["last"]["blocks.4.attn.hook_z[1]"].shape == (2, 64)
    assert acts["post_instruction"]["blocks.4.hook_resid_post"].shape == (2, 6, 576)
    torch.testing.assert_close(acts["post_instruction"]["blocks.4.hook_resid_post"].mean(1),
                               acts["post_instruction_mean"]["blocks.4.hook_resid_post"])
    # the last post-instruction token is the last prompt token
    torch.testing.assert_close(acts["post_instruction"]["blocks.4.hook_resid_post"][:, -1],
                               acts["last"]["blocks.4.hook_resid_post"])


def test_token_position_runs_only_up_to_the_token_with_the_same_numbers(wb, hf_model):
    """A named token's activations come from a forward cut after that token; they equal the full
    forward's (HF hidden states) at the token's index."""
    from workbench.sites import token_index

    prompts = ["The doctor said that the results were fine and everyone went home.", "Ask the nurse.",
               "After a long and tiring day at the hospital the surgeon finally sat down."]
    pos = "token:doctor|nurse|surgeon"
    batch = wb.tokenize(prompts)
    idx = token_index(batch, pos)
    assert int(idx.max()) + 1 < batch.input_ids.shape[1]  # something is cut
    acts = wb.capture(prompts, ["blocks.3.hook_resid_post", "blocks.12.hook_resid_post"], position=pos,
                      progress=False)
    _, hidden = _hf_hidden(hf_model, batch)
    for l in (3, 12):
        torch.testing.assert_close(acts[f"blocks.{l}.hook_resid_post"], hidden[l + 1][torch.arange(3), idx],
                                   rtol=0, atol=1e-5)


def test_unknown_site_lists_closest_names(wb, prompts):
    with pytest.raises(UnknownSite, match=r"blocks\.3\.hook_resid_post"):
        wb.site("blocks.3.hook_resid_pst")
    with pytest.raises(UnknownSite, match="out of range"):
        wb.site("blocks.3.attn.hook_z[9]")
    with pytest.raises(UnknownSite):
        wb.capture(prompts[:1], ["blocks.99.hook_resid_post"])


def test_hooks_change_outputs_and_never_leak(wb, prompts):
    base = wb.forward(prompts[:2])
    before = wb.backend.hook_count()

    def zero_head(z, site):
        return torch.zeros_like(z)

    with wb.hooks({"blocks.10.attn.hook_z[4]": zero_head}):
        assert wb.backend.hook_count() > before
        changed = wb.forward(prompts[:2])
        z = wb.capture(prompts[:2], ["blocks.10.attn.hook_z"], progress=False)["blocks.10.attn.hook_z"]
    assert (changed - base).abs().max() > 1e-3
    assert (z[:, 4] == 0).all() and (z[:, 3] != 0).any()  # only head 4 was zeroed

    with pytest.raises(RuntimeError, match="boom"):
        with wb.hooks({"blocks.2.hook_resid_post": lambda t, s: t * 0}):
            raise RuntimeError("boom")
    def interrupt(t, site):
        raise KeyboardInterrupt  # Ctrl-C in a notebook, mid forward pass

    with pytest.raises(KeyboardInterrupt):
        with wb.hooks({"blocks.3.hook_resid_pre": interrupt}):
            wb.forward(prompts[:2])
    with pytest.raises(ZeroDivisionError):
        wb.forward(prompts[:2], hooks={"blocks.5.hook_mlp_out": lambda t, s: 1 / 0})
    assert wb.backend.hook_count() == before
    assert torch.equal(wb.forward(prompts[:2]), base)  # the "cell run twice" check


def test_generate_is_batched_greedy_and_respects_hooks(wb):
    out = wb.generate(["What is the capital of France?", "Say hello."], max_new_tokens=8, progress=False)
    assert len(out) == 2 and "Paris" in out[0]
    # steering every position of every layer's residual towards zero destroys the answer
    with wb.hooks({f"blocks.{l}.hook_resid_post": (lambda t, s: t * 0) for l in range(5, 10)}):
        broken = wb.generate(["What is the capital of France?"], max_new_tokens=8, progress=False)
    assert "Paris" not in broken[0]


def test_nnsight_backend_matches_transformer_lens(wb, wb_nnsight, prompts):
    kinds = ["hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "mlp.hook_post",
             "hook_mlp_out", "hook_resid_post"]
    sites = [f"blocks.{l}.{k}" for l in (0, 7, 29) for k in kinds] + ["blocks.7.attn.hook_z[2]"]
    a = wb.capture(prompts, sites, position="all", progress=False)
    b = wb_nnsight.capture(prompts, sites, position="all", progress=False)
    for s in sites:  # float noise only (nnsight runs the model on its own thread): ~1e-4 at layer 29
        err = ((a[s] - b[s]).abs() / (a[s].abs() + 1)).max().item()
        assert err < 1e-3, f"{s}: relative difference {err:.2e}"
    hook = {"blocks.6.attn.hook_z[1]": lambda z, s: z * 3}
    torch.testing.assert_close(wb.forward(prompts, hooks=hook), wb_nnsight.forward(prompts, hooks=hook),
                               rtol=1e-4, atol=1e-3)  # float noise seen: 1.5e-4 on logits of ~20


def test_hook_of_wrong_shape_names_the_site(wb, prompts):
    from workbench.model import HookShapeError

    batch = wb.tokenize(prompts[:2])
    clean = wb.forward(batch)
    site = "blocks.3.hook_resid_post"
    with pytest.raises(HookShapeError, match=r"blocks\.3\.hook_resid_post.*returned \(2, 576\).*shape \(2, \d+, 576\)"):
        with wb.hooks({site: lambda t, s: t[:, -1]}):
            wb.forward(batch)
    with pytest.raises(HookShapeError, match=r"blocks\.2\.attn\.hook_z\[1\].*returned list"):
        with wb.hooks({"blocks.2.attn.hook_z[1]": lambda t, s: [0.0]}):
            wb.forward(batch)
    assert torch.equal(wb.forward(batch), clean)  # nothing left installed


def test_next_token_logprobs_and_grad_forward_against_plain_hf(wb, hf_model, prompts):
    batch = wb.tokenize(prompts)
    ref = _hf_hidden(hf_model, batch)[0][:, -1].double().log_softmax(-1)  # left padded: last = next token
    first = [wb.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", " Yes", "No")]
    lp = wb.next_token_logprobs(prompts, [["Yes", " Yes"], "No"], batch_size=3)
    assert lp.shape == (len(prompts), 2)
    torch.testing.assert_close(lp[:, 0].double(), ref[:, sorted(set(first[:2]))].logsumexp(-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(lp[:, 1].double(), ref[:, first[2]], atol=1e-4, rtol=0)
    own = wb.next_token_logprobs(prompts[:2], [["Yes", "No"], ["No", "Yes"]], per_prompt=True)
    want = torch.stack([ref[0, [first[0], first[2]]], ref[1, [first[2], first[0]]]])
    torch.testing.assert_close(own.double(), want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="same, non-zero number"):
        wb.next_token_logprobs(prompts[:2], [["Yes"], ["No", "Yes"]], per_prompt=True)
    # grad=True keeps the graph (and the same numbers); the default does not
    logits = wb.forward(prompts[:1], grad=True)
    assert logits.requires_grad and not wb.forward(prompts[:1]).requires_grad
    logits[0, -1].logsumexp(-1).backward()
    emb = wb.model.get_input_embeddings().weight
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    wb.model.zero_grad(set_to_none=True)
    assert wb.backend.persistent_hooks and wb.backend.installed_count() == 0
