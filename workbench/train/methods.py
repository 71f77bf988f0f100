"""Fine-tuning methods: what is trainable, which hooks are active, what a checkpoint holds.

A :class:`Method` prepares the wrapped model for one ``finetuning_type`` (injects LoRA, freezes,
creates intervention parameters), names the interventions active *during* training and the ones
kept *at inference*, and saves / loads its trainable state as safetensors + JSON (used both for
checkpoints, so that ``resume_from_checkpoint`` works, and for the final artifacts).

Saved LoRA adapters are portable: peft's format with the plain Hugging Face module names (the
TransformerLens bridge's ``._original_component`` segments are stripped), so ``PeftModel.from_pretrained``
loads them into an unwrapped model too; :func:`load_adapter` loads them back into a wrapped one.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from ..interventions import Intervention
from .recipe import Recipe

BRIDGE = "._original_component"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"


def strip_bridge(name: str) -> str:
    """A parameter name of the bridged model -> the plain Hugging Face name."""
    return name.replace(BRIDGE, "")


def is_bridged(model: nn.Module) -> bool:
    return any(n.endswith(BRIDGE) for n, _ in model.named_modules())


def lora_target_regex(model: nn.Module, targets: list[str]) -> str:
    """A peft ``target_modules`` regex for the ``nn.Linear`` s named ``targets`` (through the bridge)."""
    alt = "|".join(re.escape(t) for t in targets)
    return rf".*\.({alt})\._original_component$" if is_bridged(model) else rf".*\.({alt})$"


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` over unique parameters."""
    params = {id(p): p for p in module.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ---------------------------------------------------------------------- LoRA files
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

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
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


def load_adapter(wb, folder: str | Path):
    """Inject the LoRA adapter saved in ``folder`` into ``wb.model`` (in place); return the PeftModel."""
    folder = Path(folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    targets = cfg["target_modules"]
    if isinstance(targets, str):
        raise ValueError(f"{folder}: target_modules is a regex; expected a list of module names")
    pm = inject_lora(wb.model, list(targets), cfg["r"], cfg["lora_alpha"], cfg.get("lora_dropout", 0.0))
    load_adapter_weights(pm, folder)
    return pm


# ---------------------------------------------------------------------- full weights
def _trainable_full(name: str) -> bool:
    # The bridge gives the unembedding a zero bias the HF model does not have: keep it frozen.
    return not strip_bridge(name).endswith("lm_head.bias")


def save_full_weights(wb, folder: str | Path) -> Path:
    """Plain-HF safetensors + config + tokenizer: ``Workbench.load(folder)`` loads it."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {strip_bridge(n): p.detach().cpu().contiguous() for n, p in wb.model.named_parameters()
               if _trainable_full(n)}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    wb.model.config.save_pretrained(str(folder))
    wb.tokenizer.save_pretrained(str(folder))
    return folder


def load_full_weights(wb, folder: str | Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(Path(folder) / "model.safetensors"))
    params = {strip_bridge(n): p for n, p in wb.model.named_parameters() if _trainable_full(n)}
    missing = sorted(set(params) - set(saved))
    if missing:
        raise ValueError(f"{folder}: weights missing for {missing[:4]}")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(saved[k])


# ---------------------------------------------------------------------- methods
class Method:
    """Base: LoRA-free, hook-free. Subclasses fill :attr:`core` and :attr:`extras`."""

    name = "base"

    def __init__(self, wb, recipe: Recipe, records):
        self.wb, self.recipe, self.records = wb, recipe, records
        self.core: nn.Module = wb.model
        self.extras: nn.Module | None = None
        self.info: dict = {}

    def prepare(self) -> None:
        """Create trainable parameters (called once, after seeding)."""

    def warm_start(self, run_dir: Path) -> None:
        raise NotImplementedError(f"{self.name}: warm start is not supported")

    def training_hooks(self) -> Intervention | None:
        """What is installed while training."""
        return None

    def deployed(self) -> Intervention | None:
        """What must stay installed at inference (e.g. LoFIT's head biases)."""
        return None

    def extra_loss(self) -> dict[str, torch.Tensor]:
        """Penalties added to the loss (e.g. LoFIT's L1)."""
        return {}

    def save_trainables(self, folder: Path) -> None:
        raise NotImplementedError

    def load_trainables(self, folder: Path) -> None:
        raise NotImplementedError

    def finalize(self, run_dir: Path) -> dict:
        """Write the final artifacts into the run folder; return summary entries."""
        self.save_trainables(run_dir)
        return {}

    def cleanup(self) -> None:
        """Called after training, also on an exception."""


class TrainModule(nn.Module):
    """What the HF Trainer trains: the model (``core``) plus intervention parameters (``extras``).

    The Trainer passes ``num_items_in_batch`` (labelled tokens of the whole step: every accumulated
    micro-batch and, under ``torchrun`` / ``accelerate launch``, every process): the loss is the sum over this
    micro-batch divided by it, so several processes or accumulation steps give the same gradient as
    one batch of the global size."""

    accepts_loss_kwargs = True

    def __init__(self, core: nn.Module, extras: nn.Module | None = None):
        super().__init__()
        self.core = core
        self.extras = extras if extras is not None else nn.Module()

    def forward(self, input_ids, attention_mask=None, labels=None, num_items_in_batch=None, **_):
        if labels is None:
            return self.core(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        from .loss import response_loss

        return {"loss": response_loss(self.core, input_ids, attention_mask, labels, num_items=num_items_in_batch)}


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


class FullMethod(Method):
    name = "full"

    def prepare(self) -> None:
        for n, p in self.wb.model.named_parameters():
            p.requires_grad_(_trainable_full(n))

    def warm_start(self, run_dir: Path) -> None:
        load_full_weights(self.wb, run_dir / MODEL_DIR)

    def save_trainables(self, folder: Path) -> None:
        save_full_weights(self.wb, Path(folder) / MODEL_DIR)

    def load_trainables(self, folder: Path) -> None:
        load_full_weights(self.wb, Path(folder) / MODEL_DIR)


def freeze(model: nn.Module) -> dict[int, bool]:
    """Freeze every parameter; return the previous ``requires_grad`` flags (for :func:`unfreeze`)."""
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    return flags


def unfreeze(model: nn.Module, flags: dict[int, bool]) -> None:
    for p in model.parameters():
        p.requires_grad_(flags.get(id(p), p.requires_grad))


def make_method(wb, recipe: Recipe, records) -> Method:
    from .caft import CaftFullMethod, CaftMethod
    from .lofit import LofitMethod

    caft = CaftFullMethod if recipe.caft_base == "full" else CaftMethod
    cls = {"lora": LoraMethod, "full": FullMethod, "lofit": LofitMethod, "caft": caft}[recipe.finetuning_type]
    return cls(wb, recipe, records)
