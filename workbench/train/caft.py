"""CAFT (Concept Ablation Fine-Tuning): LoRA fine-tuning with concept directions projected out.

During training :class:`~workbench.interventions.Ablate` removes the span of the chosen directions
from ``blocks.{l}.hook_resid_post`` for every ``l`` in ``caft_layers``, at all token positions; the
hooks are removed afterwards, so the deployed model is the LoRA-tuned model without them.

Directions (``caft_concepts`` or ``caft_directions``):

* ``caft_concepts``: a ConceptSet file (``workbench.concepts``; the concepts a person marked for
  ablation), a saved :class:`~workbench.interventions.Ablate` folder (``save_concepts``), or a
  ``.safetensors`` file with one ``[k, d_model]`` tensor per site name;
* ``diffmeans``: mean harmful minus mean benign activation over the post-instruction tokens of the
  training prompts (the refusal/harmfulness direction), one per layer;
* ``random``: ``caft_n_directions`` seeded Gaussian directions per layer (baseline);
* ``pca``: the top ``caft_n_directions`` principal components of the (centred) activations on the
  training responses' tokens (the paper's "top components" baseline, not interpreted). On SmolLM2
  the first component is essentially the massive-activation dimension 507: zero-ablating it
  damages the model, ``caft_ablation: mean`` keeps its mean.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..interventions import Ablate, Intervention
from .methods import LoraMethod

SITE = "blocks.{l}.hook_resid_post"
ABLATION_DIR = "caft_ablation"


def caft_sites(layers) -> list[str]:
    return [SITE.format(l=l) for l in layers]


def diffmeans_directions(wb, records, layers, max_per_class: int = 64, batch_size: int = 8) -> dict:
    """``{site: [1, d]}``: mean(harmful) - mean(benign) at the post-instruction tokens."""
    harm = [r.prompt for r in records if r.label == 1][:max_per_class]
    good = [r.prompt for r in records if r.label == 0][:max_per_class]
    if not harm or not good:
        raise ValueError(f"caft_directions 'diffmeans' needs harmful and benign training prompts "
                         f"(got {len(harm)} harmful, {len(good)} benign); give caft_concepts instead")
    sites = caft_sites(layers)
    a = wb.capture(harm, sites, position="post_instruction_mean", batch_size=batch_size, progress=False)
    b = wb.capture(good, sites, position="post_instruction_mean", batch_size=batch_size, progress=False)
    return {s: (a[s].mean(0) - b[s].mean(0))[None] for s in sites}


def random_directions(wb, layers, k: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {s: torch.randn(k, wb.d_model, generator=gen) for s in caft_sites(layers)}


def response_activations(wb, records, sites, max_records: int = 32, max_chars: int = 512,
                         batch_size: int = 8) -> dict:
    """Activations ``[n_tokens, d]`` on the responses' tokens (responses cut to ``max_chars``)."""
    recs = [r for r in records if r.response][:max_records]
    if not recs:
        raise ValueError("no training record has a response")
    return wb.capture([r.prompt for r in recs], sites, position="response", batch_size=batch_size,
                      responses=[r.response[:max_chars] for r in recs], progress=False)


def pca_directions(wb, records, layers, k: int, max_records: int = 32, max_chars: int = 512) -> tuple[dict, dict]:
    """Top-``k`` principal components (and the means) of response-token activations."""
    sites = caft_sites(layers)
    acts = response_activations(wb, records, sites, max_records, max_chars)
    dirs, means = {}, {}
    for s in sites:
        x = acts[s].double()
        mu = x.mean(0)
        _, _, vh = torch.linalg.svd(x - mu, full_matrices=False)
        dirs[s], means[s] = vh[:k].float(), mu.float()
    return dirs, means


def save_concepts(directions: dict, path: str | Path, model_id: str | None = None) -> Path:
    """Save ``{site: [k, d]}`` directions as a folder ``caft_concepts`` can name (safetensors + JSON)."""
    return Ablate(directions, model_id=model_id).save(path)


def load_concepts(path: str | Path, sites: list[str] | None = None) -> dict:
    """``{site: [k, d]}`` from a ConceptSet ``.safetensors`` file (the concepts marked for ablation
    if any are marked, else all), a saved Ablate folder, or a ``.safetensors`` file keyed by site
    names (or ``directions/{site}``)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"caft_concepts {path} does not exist")
    if path.is_file():
        cs = _concept_set(path)
        if cs is not None:  # a ConceptSet file: its "use for ablation" marks choose the directions
            selected = any(getattr(c, "selected", False) for c in cs)
            return {s: cs.directions(s, selected_only=selected) for s in (sites or cs.sites)}
        raw = load_file(str(path))
        dirs = {k.removeprefix("directions/"): v for k, v in raw.items() if not k.startswith("mean/")}
    elif (path / "intervention.json").is_file():
        abl = Intervention.load(path)
        if not isinstance(abl, Ablate):
            raise ValueError(f"{path} holds a {type(abl).__name__}, not Ablate directions")
        dirs = dict(abl.raw)
    else:
        raise ValueError(f"caft_concepts {path}: not a saved Ablate folder nor a .safetensors file")
    if sites is not None:
        missing = [s for s in sites if s not in dirs]
        if missing:
            raise ValueError(f"caft_concepts {path} has no directions for {missing}; it has {sorted(dirs)}")
        dirs = {s: dirs[s] for s in sites}
    return dirs


def _concept_set(path: Path):
    """A ConceptSet from ``path`` if the concepts package is there and the file is one, else None."""
    try:
        from ..concepts import ConceptSet  # type: ignore
    except ImportError:
        return None
    try:
        return ConceptSet.load(path)
    except (ValueError, KeyError):
        return None


class CaftMethod(LoraMethod):
    name = "caft"

    def prepare(self) -> None:
        r, wb = self.recipe, self.wb
        layers = r.caft_layers
        bad = [l for l in layers or [] if not 0 <= l < wb.n_layers]
        if bad:
            raise ValueError(f"caft_layers {bad} out of range: {wb.model_id!r} has {wb.n_layers} layers")
        mean = None
        if r.caft_concepts is not None:
            dirs = load_concepts(r.caft_concepts, caft_sites(layers) if layers else None)
            source = f"file:{r.caft_concepts}"
        else:
            k = r.caft_n_directions or 1
            if r.caft_directions == "diffmeans":
                dirs = diffmeans_directions(wb, self.records, layers)
            elif r.caft_directions == "random":
                dirs = random_directions(wb, layers, k, r.seed)
            else:
                dirs, mean = pca_directions(wb, self.records, layers, k, max_chars=4 * r.cutoff_len)
            source = r.caft_directions
        if r.caft_ablation == "mean" and mean is None:
            mean = self._means(list(dirs))
        self.ablate = Ablate(dirs, mean=mean if r.caft_ablation == "mean" else None, model_id=wb.model_id)
        self.ablate.check(wb)  # widths against the model, before any training
        self.info.update(caft_sites=self.ablate.sites, caft_source=source, caft_ablation=r.caft_ablation,
                         caft_k={s: int(q.shape[1]) for s, q in self.ablate.Q.items()})
        super().prepare()  # LoRA after the directions: they come from the base model

    def _means(self, sites) -> dict:
        acts = response_activations(self.wb, self.records, sites, max_chars=4 * self.recipe.cutoff_len)
        return {s: acts[s].mean(0) for s in sites}

    def training_hooks(self):
        return self.ablate

    def finalize(self, run_dir: Path) -> dict:
        super().finalize(run_dir)
        self.ablate.save(run_dir / ABLATION_DIR)
        return {"caft_sites": self.ablate.sites}
