"""The refusal direction (Arditi et al. 2024, "Refusal in language models is mediated by a single
direction"; andyrdt/refusal_direction), found and exported.

1. **Candidates**: at every post-instruction token position ``i`` (the chat template's tokens after
   the user's message) and every layer ``l``, ``r[i, l] = mean(harmful) - mean(harmless)`` of
   ``blocks.{l}.hook_resid_pre`` over training prompts.
2. **Scores** of each candidate on validation prompts, with the refusal score = log-odds that the
   first response token opens a refusal (:func:`workbench.evals.judges.refusal_log_odds`):
   * *bypass*: mean refusal score on harmful prompts with ``r`` directionally ablated everywhere
     (lower = ablating it removes more refusal);
   * *induce*: mean refusal score on harmless prompts with ``r`` added at layer ``l`` (all
     positions; higher = adding it makes the model refuse);
   * *KL*: mean KL divergence of the next-token distribution on harmless prompts, ablated vs not.
3. **Selection**: the lowest bypass score among candidates with KL <= ``kl_max`` (0.1), induce
   score > 0, and a layer below ``(1 - prune_layers) * n_layers`` (the last 20% excluded).

Directional ablation "everywhere" projects ``r`` out of the residual stream before the first block
and after every attention and MLP output (``blocks.0.hook_resid_pre`` and every
``hook_resid_mid`` / ``hook_resid_post``), which is what folding ``W <- W - r r^T W`` into the
embedding and every matrix that writes to the residual stream computes: :func:`export_ablated`
writes that model as a plain Hugging Face folder.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from tqdm.auto import tqdm

from ..evals.judges import refusal_log_odds, refusal_token_ids
from ..interventions import Ablate, Steer
from ..sites import site_name

if TYPE_CHECKING:
    from ..model import Workbench

FORMAT = "workbench_refusal_direction/1"


def ablation_sites(n_layers: int) -> list[str]:
    """Where directional ablation acts: the embedding's output and after every block's attention
    and MLP (the residual stream is then orthogonal to the direction everywhere)."""
    return [site_name(0, "resid_pre")] + [site_name(l, k) for l in range(n_layers) for k in ("resid_mid", "resid_post")]


def directional_ablation(wb: Workbench, direction: torch.Tensor) -> Ablate:
    """:class:`~workbench.interventions.Ablate` of ``direction [d]`` at :func:`ablation_sites`."""
    return Ablate({s: direction for s in ablation_sites(wb.n_layers)}, model_id=wb.model_id)


def activation_addition(direction: torch.Tensor, layer: int, coef: float = 1.0, model_id: str | None = None) -> Steer:
    """``coef`` x ``direction`` added to ``blocks.{layer}.hook_resid_pre`` at every position."""
    return Steer(site_name(layer, "resid_pre"), direction, alpha=coef, model_id=model_id)


def _kl(base_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``[n]`` KL(base || other) of next-token distributions."""
    lp, lq = base_logits.float().log_softmax(-1), logits.float().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def candidate_directions(wb: Workbench, harmful: list[str], harmless: list[str], batch_size: int = 16,
                         progress: bool = True) -> torch.Tensor:
    """``[n_positions, n_layers, d]``: harmful minus harmless means of ``blocks.{l}.hook_resid_pre``
    at each post-instruction position (the chat template's tokens after the user's message)."""
    if not harmful or not harmless:
        raise ValueError(f"candidate_directions needs harmful and harmless prompts (got {len(harmful)} and "
                         f"{len(harmless)})")
    sites = [site_name(l, "resid_pre") for l in range(wb.n_layers)]
    means = []
    for prompts in (harmful, harmless):
        acts = wb.capture(prompts, sites, position="post_instruction", batch_size=batch_size, progress=progress)
        means.append(torch.stack([acts[s].mean(0) for s in sites], 1))  # [k, L, d]
    return means[0] - means[1]


@dataclass
class RefusalDirection:
    """The selected direction and every candidate's scores.

    ``direction``: ``[d]`` (the raw difference of means: its norm is the one added for *induce*);
    ``position``: index into the post-instruction tokens (negative: from the end); ``layer``: the
    ``hook_resid_pre`` it was read at. ``scores``: one dict per candidate with position, layer,
    bypass, induce, kl and whether it passed the filters; ``baseline``: refusal scores without any
    intervention (harmful / harmless validation prompts)."""

    direction: torch.Tensor
    position: int
    layer: int
    model_id: str | None = None
    scores: list[dict] = field(default_factory=list)
    baseline: dict = field(default_factory=dict)

    def ablation(self, wb: Workbench) -> Ablate:
        return directional_ablation(wb, self.direction)

    def addition(self, coef: float = 1.0) -> Steer:
        """:func:`activation_addition` of the direction at its layer."""
        return activation_addition(self.direction, self.layer, coef, self.model_id)

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"direction": self.direction.contiguous()}, str(folder / "direction.safetensors"))
        meta = {"format": FORMAT, "position": self.position, "layer": self.layer, "model_id": self.model_id,
                "scores": self.scores, "baseline": self.baseline}
        tmp = folder / "direction.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(folder / "direction.json")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> RefusalDirection:
        from safetensors.torch import load_file

        folder = Path(folder)
        meta_path = folder / "direction.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder} holds no refusal direction (no direction.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        return cls(load_file(str(folder / "direction.safetensors"))["direction"], meta["position"], meta["layer"],
                   meta.get("model_id"), meta.get("scores", []), meta.get("baseline", {}))


# the registry datasets the refusal direction is found from (the paper: AdvBench + HarmBench-like
# harmful instructions against Alpaca-like harmless ones), shared by the CLI and the experiment
HARMFUL_DATASETS = ("advbench", "harmbench")
HARMLESS_DATASETS = ("benign_instructions",)


class RefusalPrompts(NamedTuple):
    """The four prompt sets :func:`select_refusal_direction` takes, in its order (``*sets``)."""

    harmful_train: list[str]
    harmless_train: list[str]
    harmful_val: list[str]
    harmless_val: list[str]


def refusal_prompts(harmful: Sequence[str] = HARMFUL_DATASETS, harmless: Sequence[str] = HARMLESS_DATASETS,
                    n_train: int = 64, n_val: int = 32, max_chars: int = 300, seed: int = 0) -> RefusalPrompts:
    """The prompt sets of :func:`select_refusal_direction` from the registry's datasets, each a
    seeded sample of up to ``n_train`` / ``n_val`` prompts of at most ``max_chars`` characters
    (short instructions, as the paper's) from the named datasets' train / val splits. Raises
    ``ValueError`` on an empty set."""
    from ..data import load_dataset

    def sample(names: Sequence[str], split: str, n: int) -> list[str]:
        recs = [r.prompt for name in names for r in load_dataset(name, split=split) if len(r.prompt) <= max_chars]
        return random.Random(seed).sample(recs, min(n, len(recs)))

    sets = RefusalPrompts(sample(harmful, "train", n_train), sample(harmless, "train", n_train),
                          sample(harmful, "val", n_val), sample(harmless, "val", n_val))
    empty = [k for k, v in sets._asdict().items() if not v]
    if empty:
        raise ValueError(f"no prompts of <= {max_chars} characters for {empty} in {list(harmful)} / {list(harmless)}")
    return sets


def select_refusal_direction(wb: Workbench, harmful_train: list[str], harmless_train: list[str],
                             harmful_val: list[str], harmless_val: list[str], kl_max: float = 0.1,
                             prune_layers: float = 0.2, induce_min: float = 0.0, positions: list[int] | None = None,
                             batch_size: int = 16, progress: bool = True) -> RefusalDirection:
    """Arditi et al.'s selection (module docstring). ``positions``: post-instruction positions to
    try (negative indices, e.g. ``[-1]``; default all). Cost: 3 passes over the validation prompts
    per candidate; on CPU restrict ``positions`` and use a few dozen validation prompts.

    Raises ``ValueError`` when no candidate passes the filters (the scores say why)."""
    cands = candidate_directions(wb, harmful_train, harmless_train, batch_size, progress)
    k = cands.shape[0]
    positions = list(range(-k, 0)) if positions is None else positions
    bad = [p for p in positions if not -k <= p < 0]
    if bad:
        raise ValueError(f"positions {bad} out of range: this chat template has {k} post-instruction tokens "
                         f"(use -{k} .. -1)")
    ids = refusal_token_ids(wb.tokenizer)
    max_layer = int((1 - prune_layers) * wb.n_layers)
    base_harmful = wb.next_token_logits(harmful_val, batch_size=batch_size)
    base_harmless = wb.next_token_logits(harmless_val, batch_size=batch_size)
    baseline = {"harmful": float(refusal_log_odds(base_harmful, ids).mean()),
                "harmless": float(refusal_log_odds(base_harmless, ids).mean())}
    rows = []
    todo = [(p, l) for p in positions for l in range(max_layer)]
    for p, l in tqdm(todo, desc="refusal direction candidates", disable=not progress):
        r = cands[p, l]
        if not torch.isfinite(r).all() or r.norm() == 0:
            continue
        abl = directional_ablation(wb, r)
        bypass = refusal_log_odds(wb.next_token_logits(harmful_val, hooks=abl, batch_size=batch_size), ids).mean()
        kl = _kl(base_harmless, wb.next_token_logits(harmless_val, hooks=abl, batch_size=batch_size)).mean()
        add = activation_addition(r, l, model_id=wb.model_id)
        induce = refusal_log_odds(wb.next_token_logits(harmless_val, hooks=add, batch_size=batch_size), ids).mean()
        ok = bool(kl <= kl_max and induce > induce_min)
        rows.append({"position": p, "layer": l, "bypass": float(bypass), "induce": float(induce), "kl": float(kl),
                     "passed": ok})
    passed = [row for row in rows if row["passed"]]
    if not passed:
        raise ValueError(f"no candidate direction passed the filters (KL <= {kl_max}, induce > {induce_min}, "
                         f"layer < {max_layer}) among {len(rows)}; best induce "
                         f"{max((r['induce'] for r in rows), default=float('nan')):.2f}, least KL "
                         f"{min((r['kl'] for r in rows), default=float('nan')):.3f}")
    best = min(passed, key=lambda row: row["bypass"])
    return RefusalDirection(cands[best["position"], best["layer"]].clone(), best["position"], best["layer"],
                            wb.model_id, rows, baseline)


# ---------------------------------------------------------------------- export
def _project_out(w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``W - r r^T W`` for a matrix whose output (first) dimension is the residual stream (float64)."""
    w64, r64 = w.double(), r.double()
    return (w64 - torch.outer(r64, r64 @ w64)).to(w.dtype)


def export_ablated(wb: Workbench, direction: torch.Tensor, folder: str | Path) -> Path:
    """Fold directional ablation of ``direction [d]`` into the weights and save a plain Hugging Face
    model folder (``AutoModelForCausalLM.from_pretrained`` loads it; so does ``Workbench.load``).

    The embedding becomes ``E - (E r) r^T``; every attention output and MLP down projection (and
    their biases, if any) ``W - r r^T W``. A tied unembedding is untied and keeps the original
    weights, so the logits equal those of the hooked :func:`directional_ablation`. Llama-style
    decoders (``model.layers[i].self_attn.o_proj`` / ``mlp.down_proj``)."""
    from transformers import AutoModelForCausalLM

    from ..train.methods.base import strip_bridge
    from ..train.methods.full import trainable_full

    r = torch.as_tensor(direction).detach().float().reshape(-1).cpu()
    if r.shape[0] != wb.d_model:
        raise ValueError(f"direction has width {r.shape[0]}, the model's residual stream {wb.d_model}")
    r = r / r.norm()
    state = {strip_bridge(n): p.detach().cpu() for n, p in wb.model.named_parameters() if trainable_full(n)}
    embed_key = next((k for k in state if k.endswith("embed_tokens.weight")), None)
    if embed_key is None:
        raise ValueError("export_ablated supports Llama-style decoders (no embed_tokens.weight found)")
    out = dict(state)
    head_key = embed_key.replace("model.embed_tokens", "lm_head")
    if head_key not in out:  # tied (named_parameters lists a shared weight once): untie, keep the original
        out[head_key] = state[embed_key].clone()
    e = state[embed_key].double()
    out[embed_key] = (e - torch.outer(e @ r.double(), r.double())).to(state[embed_key].dtype)
    writers = [k for k in state if k.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight",
                                                "self_attn.o_proj.bias", "mlp.down_proj.bias"))]
    if len([k for k in writers if k.endswith("weight")]) != 2 * wb.n_layers:
        raise ValueError("export_ablated supports Llama-style decoders (o_proj / down_proj per layer)")
    for k in writers:
        w = state[k]
        out[k] = _project_out(w[:, None] if w.dim() == 1 else w, r).reshape(w.shape)
    config = wb.model.config.__class__.from_dict(wb.model.config.to_dict())
    config.tie_word_embeddings = False
    fresh = AutoModelForCausalLM.from_config(config)
    missing, unexpected = fresh.load_state_dict(out, strict=False)
    if missing or unexpected:
        raise ValueError(f"export_ablated: weights did not map onto a fresh model (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")
    folder = Path(folder)
    fresh.save_pretrained(str(folder))
    wb.tokenizer.save_pretrained(str(folder))
    (folder / "workbench_export.json").write_text(json.dumps(
        {"source_model": wb.model_id, "directional_ablation": "W <- W - r r^T W (embedding, o_proj, down_proj)",
         "direction_norm_before_unit": float(torch.as_tensor(direction).float().norm())}, indent=1))
    return folder
