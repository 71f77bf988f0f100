"""LoRA (peft): low-rank adapters on the attention / MLP projections.

Saved adapters are portable: peft's format with the plain Hugging Face module names (the
TransformerLens bridge's ``._original_component`` segments are stripped), so
``PeftModel.from_pretrained`` loads them into an unwrapped model too; :func:`load_adapter` loads
them back into a wrapped one.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ...interventions import Intervention
from ..run_folder import RunFolder
from .base import Method, Need, is_bridged, strip_bridge

if TYPE_CHECKING:
    from ...model import Workbench
    from ..recipe import Recipe

ADAPTER_DIR = "adapter"
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_target_regex(model: nn.Module, targets: list[str]) -> str:
    """A peft ``target_modules`` regex for the ``nn.Linear`` s named ``targets`` (through the bridge)."""
    alt = "|".join(re.escape(t) for t in targets)
    return rf".*\.({alt})\._original_component$" if is_bridged(model) else rf".*\.({alt})$"


def save_adapter(peft_model, folder: str | Path, targets: list[str]) -> Path:
    """peft ``save_pretrained``, then rewrite weights and config with plain HF module names."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    peft_model.save_pretrained(str(folder))
    state = get_peft_model_state_dict(peft_model)
    save_file({strip_bridge(k): v.detach().cpu().contiguous() for k, v in state.items()},
              str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["target_modules"] = sorted(targets)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return folder


def inject_lora(model: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float = 0.0):
    """Wrap ``model`` with fresh LoRA layers (in place) and return the ``PeftModel``."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha,  # pyright: ignore[reportArgumentType]  # peft types lora_alpha int; floats work
                        lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
                        target_modules=lora_target_regex(model, targets))
    with warnings.catch_warnings():  # peft asks a deprecated transformers property; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def load_adapter_weights(peft_model, folder: str | Path) -> None:
    """Load a portable adapter's weights into an already injected ``peft_model``."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(Path(folder) / "adapter_model.safetensors"))
    names = {strip_bridge(k): k for k in get_peft_model_state_dict(peft_model)}
    missing = sorted(set(names) - set(saved))
    unexpected = sorted(set(saved) - set(names))
    if missing or unexpected:
        raise ValueError(f"adapter {folder} does not fit this model: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]} (different lora_target or model?)")
    set_peft_model_state_dict(peft_model, {names[k]: v for k, v in saved.items()})


def load_adapter(wb: Workbench, folder: str | Path):
    """Inject the LoRA adapter saved in ``folder`` into ``wb.model`` (in place); return the PeftModel."""
    folder = Path(folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    targets = cfg["target_modules"]
    if isinstance(targets, str):
        raise ValueError(f"{folder}: target_modules is a regex; expected a list of module names")
    pm = inject_lora(wb.model, list(targets), cfg["r"], cfg["lora_alpha"], cfg.get("lora_dropout", 0.0))
    load_adapter_weights(pm, folder)
    return pm


class LoraMethod(Method):
    name = "lora"

    def prepare(self) -> None:
        r = self.recipe
        alpha = r.lora_alpha if r.lora_alpha is not None else 2 * r.lora_rank
        self.targets = r.lora_targets()
        self.core = inject_lora(self.wb.model, self.targets, r.lora_rank, alpha, r.lora_dropout)
        self.info.update(lora_rank=r.lora_rank, lora_alpha=alpha, lora_target=self.targets)

    def warm_start(self, run_dir: Path) -> None:
        load_adapter_weights(self.core, run_dir / ADAPTER_DIR)

    def save_trainables(self, folder: Path) -> None:
        save_adapter(self.core, Path(folder) / ADAPTER_DIR, self.targets)

    def load_trainables(self, folder: Path) -> None:
        load_adapter_weights(self.core, Path(folder) / ADAPTER_DIR)

    @classmethod
    def validate(cls, recipe: Recipe, need: Need) -> None:
        bad = [t for t in recipe.lora_targets() if t not in LORA_MODULES]
        need(not bad, f"lora_target: unknown module(s) {bad}; use 'all' or names from {LORA_MODULES}")

    @classmethod
    def apply(cls, run: RunFolder, recipe: Mapping[str, Any], wb: Workbench) -> list[Intervention]:
        run.require(ADAPTER_DIR)
        load_adapter(wb, run / ADAPTER_DIR)
        return []
