"""LoFIT (Localized Fine-Tuning): train per-head vectors on ``attn.hook_z`` with the model frozen.

* Phase A (``lofit_component: A``): :class:`~workbench.interventions.HeadScale` on every head of
  ``lofit_applied_layers`` (all layers by default), ``z_h <- (1 + A_h) * z_h``, ``A_h ~ N(0, 1e-3)``,
  loss + ``lofit_l1_lambda * sum_h ||A_h||_1``. Heads are ranked by ``||A_h||_2`` and the top
  ``lofit_topk_heads`` written, with scores, to a heads file (JSON).
* Phase v (``lofit_component: v``): read the heads file, train
  :class:`~workbench.interventions.HeadBias` ``z_h <- z_h + v_h`` on those heads only. The learned
  biases are part of the fine-tuned model: the run folder keeps them (``head_bias/``) and
  :func:`workbench.train.apply_run` re-applies them at inference.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from ...interventions import HeadBias, HeadScale, Intervention
from ..errors import RecipeError
from ..run_folder import RunFolder
from .base import Method, Need, Rewiring, freeze, unfreeze

if TYPE_CHECKING:
    from ...model import Workbench
    from ..recipe import Recipe

COMPONENTS = ("A", "v")

HEADS_FORMAT = "workbench.lofit_heads"
SCALE_DIR = "head_scale"
BIAS_DIR = "head_bias"
HEADS_FILE = "heads.json"


def save_heads_file(path: str | Path, ranked: list[tuple[int, int, float]], k: int, wb: Workbench,
                    **meta: Any) -> Path:
    """Write the top ``k`` of ``ranked`` ``[(layer, head, score)]`` (best first) plus all scores."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": HEADS_FORMAT, "version": 1, "model_id": wb.model_id, "n_layers": wb.n_layers,
           "n_heads": wb.n_heads, "d_head": wb.d_head, "k": k, "score": "l2 norm of A_h",
           "heads": [{"layer": l, "head": h, "score": s} for l, h, s in ranked[:k]],
           "all_scores": [[l, h, s] for l, h, s in ranked], **meta}
    path.write_text(json.dumps(doc, indent=2))
    return path


def load_heads_file(path: str | Path, wb: Workbench | None = None, k: int | None = None) -> list[tuple[int, int, float]]:
    """``[(layer, head, score)]`` from a heads file, best first (the top ``k`` if given); checked
    against ``wb``'s shape when given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"heads file {path} does not exist; run LoFIT phase A (lofit_component: A) first")
    doc = json.loads(path.read_text())
    if doc.get("format") != HEADS_FORMAT:
        raise ValueError(f"{path} is not a LoFIT heads file (format {doc.get('format')!r})")
    if wb is not None:
        for key in ("n_heads", "d_head", "n_layers"):
            if doc.get(key) is not None and doc[key] != getattr(wb, key):
                raise ValueError(f"{path}: heads file is for a model with {key}={doc[key]}, "
                                 f"but {wb.model_id!r} has {key}={getattr(wb, key)}")
    heads = [(int(h["layer"]), int(h["head"]), float(h["score"])) for h in doc["heads"]]
    if k is not None:
        if k > len(heads):
            raise ValueError(f"lofit_topk_heads={k} but {path} holds only {len(heads)} heads")
        heads = heads[:k]
    return heads


class LofitMethod(Method):
    name = "lofit"
    changes_weights = False  # the model stays frozen: its interventions are hooks
    owned_keys = ("lofit_component",)

    @classmethod
    def validate(cls, recipe: Recipe, need: Need) -> None:
        need(recipe.lofit_component is not None, "finetuning_type 'lofit' needs lofit_component: A "
             "(phase A, select heads) or v (phase v, bias tuning on the selected heads)")
        need(recipe.lofit_component in COMPONENTS,
             f"lofit_component must be one of {list(COMPONENTS)}, got {recipe.lofit_component!r}")
        need(recipe.lofit_topk_heads is None or recipe.lofit_topk_heads > 0, "lofit_topk_heads must be > 0")
        for key in ("lofit_l1_lambda", "lofit_init_std"):
            need(getattr(recipe, key) >= 0, f"{key} must be >= 0, got {getattr(recipe, key)}")
        if recipe.lofit_component == "v":
            need(recipe.lofit_heads_path is not None or recipe.warm_start_from is not None,
                 "lofit_component 'v' needs lofit_heads_path: the heads file a phase-A run "
                 "(lofit_component: A) wrote")

    @classmethod
    def apply(cls, run: RunFolder, recipe: Mapping[str, Any], wb: Workbench) -> list[Intervention]:
        if recipe.get("lofit_component") != "v":  # phase A's scales only select heads
            return []
        run.require(BIAS_DIR)
        bias = HeadBias.load(run / BIAS_DIR)
        bias.check(wb)
        return [bias]

    @classmethod
    def rewire(cls, recipe: Recipe, plan: Rewiring) -> dict[str, Any]:
        """Phase A writes its heads file into the new run folder; phase v reads it from there."""
        heads = plan.key(recipe.lofit_heads_path or Path(recipe.output_dir) / HEADS_FILE)
        if recipe.lofit_component == "A":
            plan.moved[heads] = str(plan.run_dir / HEADS_FILE)
        elif heads not in plan.moved:
            raise RecipeError(f"{plan.source}: lofit_heads_path {heads} is written by no recipe listed before it "
                              f"in method {plan.method!r}; list the phase A recipe first")
        return {"lofit_heads_path": plan.moved[heads]}

    def prepare(self) -> None:
        r, wb = self.recipe, self.wb
        self._flags = freeze(wb.model)  # the model itself is not trained; restored by cleanup()
        if r.lofit_component == "A":
            layers = r.lofit_applied_layers if r.lofit_applied_layers else list(range(wb.n_layers))
            bad = [l for l in layers if not 0 <= l < wb.n_layers]
            if bad:
                raise ValueError(f"lofit_applied_layers {bad} out of range: {wb.model_id!r} has {wb.n_layers} layers")
            n_heads = len(layers) * wb.n_heads
            self.topk = r.lofit_topk_heads if r.lofit_topk_heads is not None else max(1, round(0.05 * n_heads))
            if self.topk > n_heads:
                raise ValueError(f"lofit_topk_heads={self.topk} but only {n_heads} heads are trained")
            self.intervention = HeadScale.for_model(wb, layers=layers, init_std=r.lofit_init_std, seed=r.seed)
        else:
            heads = self._heads()
            self.intervention = HeadBias.for_model(wb, heads=[(l, h) for l, h, _ in heads])
            self.info["heads"] = [[l, h] for l, h, _ in heads]
        self.extras = self.intervention
        self.info.update(component=r.lofit_component, n_heads_trained=len(self.intervention.head_list))

    def _heads(self) -> list[tuple[int, int, float]]:
        r = self.recipe
        if r.lofit_heads_path is not None:
            return load_heads_file(r.lofit_heads_path, self.wb, k=r.lofit_topk_heads)
        assert r.warm_start_from is not None  # validate() made sure one is set
        warm = HeadBias.load(Path(r.warm_start_from) / BIAS_DIR)
        return [(l, h, float("nan")) for l, h in warm.head_list]

    def warm_start(self, run_dir: Path) -> None:
        cls, sub = (HeadScale, SCALE_DIR) if self.recipe.lofit_component == "A" else (HeadBias, BIAS_DIR)
        if not (run_dir / sub).is_dir():
            raise FileNotFoundError(f"warm_start_from {run_dir}: no {sub}/ there (was it a LoFIT phase-"
                                    f"{self.recipe.lofit_component} run?)")
        copied = self.intervention.load_values_from(cls.load(run_dir / sub))
        if not copied:
            raise ValueError(f"warm_start_from {run_dir}: none of its heads are among this run's heads")
        self.info["warm_started_heads"] = len(copied)

    def training_hooks(self):
        return self.intervention

    def cleanup(self) -> None:
        unfreeze(self.wb.model, getattr(self, "_flags", {}))

    def deployed(self):
        return self.intervention if self.recipe.lofit_component == "v" else None

    def extra_loss(self) -> dict[str, torch.Tensor]:
        if self.recipe.lofit_component != "A" or self.recipe.lofit_l1_lambda == 0:
            return {}
        l1 = cast(torch.Tensor, sum(p.abs().sum() for p in self.intervention.parameters()))  # never empty
        return {"l1_penalty": self.recipe.lofit_l1_lambda * l1}

    def _dir(self) -> str:
        return SCALE_DIR if self.recipe.lofit_component == "A" else BIAS_DIR

    def save_trainables(self, folder: Path) -> None:
        self.intervention.save(Path(folder) / self._dir())

    def load_trainables(self, folder: Path) -> None:
        saved = type(self.intervention).load(Path(folder) / self._dir())
        if saved.head_list != self.intervention.head_list:
            raise ValueError(f"checkpoint {folder} trains other heads than this run")
        self.intervention.load_state_dict(saved.state_dict())

    def finalize(self, run_dir: Path) -> dict:
        self.save_trainables(run_dir)
        if self.recipe.lofit_component != "A":
            return {"heads": self.info["heads"]}
        ranked = self.intervention.top_heads(len(self.intervention.head_list))
        k = self.topk
        path = Path(self.recipe.lofit_heads_path) if self.recipe.lofit_heads_path else run_dir / HEADS_FILE
        save_heads_file(path, ranked, k, self.wb, run=str(run_dir), l1_lambda=self.recipe.lofit_l1_lambda,
                        applied_layers=self.intervention.layers)
        if path != run_dir / HEADS_FILE:  # keep a copy with the run
            save_heads_file(run_dir / HEADS_FILE, ranked, k, self.wb, run=str(run_dir),
                            l1_lambda=self.recipe.lofit_l1_lambda, applied_layers=self.intervention.layers)
        return {"heads_file": str(path), "top_heads": [[l, h, round(s, 6)] for l, h, s in ranked[:k]]}
