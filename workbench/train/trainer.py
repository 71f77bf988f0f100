"""The one training path: chat-formatted SFT on Hugging Face ``Trainer``.

Loss on response tokens only (labels ``-100`` elsewhere, right padding). What is trained, which
hooks are active and what a checkpoint holds is the method's (:mod:`workbench.train.methods`, one
class per ``finetuning_type``); the run folder is :class:`~workbench.train.run_folder.RunFolder`.

Interventions are installed with ``with wb.hooks(...)`` around ``trainer.train()`` (the TransformerLens
backend fires them on every call of the model) and removed on any exit. Because the model is the
Trainer's, ``accelerate launch`` / ``torchrun`` run the same code on several GPUs, and ``torchrun
--nproc_per_node N`` on several CPU processes (gloo; ``tests/train/test_distributed.py`` checks that
two processes train the same weights as one with the same global batch).

A run folder holds ``config.json``, ``data.jsonl``, ``metrics.jsonl``, ``loss_curve.svg``,
``summary.json``, ``checkpoint-N/`` folders every ``save_steps`` (resumable: trainable state as
safetensors + the Trainer's optimizer / scheduler / RNG state; none after the last step unless it
falls on ``save_steps``) and the final artifacts: ``adapter/`` (portable peft LoRA), ``model/``
(full weights), ``head_scale/`` + ``heads.json`` (LoFIT phase A), ``head_bias/`` (LoFIT phase v),
``caft_ablation/`` (the directions CAFT ablated).

>>> from workbench.train import run_recipe, apply_run
>>> run = run_recipe("examples/lofit/head.yaml")
>>> deployed = apply_run(run, wb)            # loads LoRA / weights into wb, returns hooks to keep
>>> with wb.hooks(deployed): wb.generate([...])
"""

from __future__ import annotations

import math
import platform
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .._log import get_logger
from ..interventions import Compose
from . import data as sft_data
from .errors import RecipeError
from .loss import TrainModule
from .methods import Method, count_parameters, make_method
from .recipe import Recipe, load_recipe
from .run_folder import CONFIG_FILE, DATA_FILE, RunFolder, read_metrics

if TYPE_CHECKING:
    from ..model import Workbench

log = get_logger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns. ``wb`` is the trained model (LoRA / weights in place);
    ``deployed`` the interventions to keep installed at inference (LoFIT's head biases), an empty
    :class:`~workbench.interventions.Compose` when there are none (CAFT's ablation is not kept)."""

    run_dir: Path
    wb: object
    method: Method
    deployed: Compose
    metrics: list[dict] = field(default_factory=list)
    n_trainable: int = 0
    n_total: int = 0

    @property
    def losses(self) -> list[float]:
        return [m["loss"] for m in self.metrics if "loss" in m]


def _trainer_classes():
    from transformers import Trainer, TrainerCallback

    class WorkbenchTrainer(Trainer):
        """HF Trainer that adds the method's penalties to the loss and saves / loads only the
        trainable state (safetensors) in checkpoints."""

        def __init__(self, *args, method: Method, **kwargs):
            super().__init__(*args, **kwargs)
            self.method = method
            self._extra_sums: dict[str, float] = {}
            self._extra_n = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            if model.training:
                extras = self.method.extra_loss()
                for name, value in extras.items():
                    loss = loss + value
                    self._extra_sums[name] = self._extra_sums.get(name, 0.0) + float(value.detach())
                self._extra_n += 1 if extras else 0
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, start_time=None):
            if self._extra_n and "loss" in logs:
                logs.update({k: v / self._extra_n for k, v in self._extra_sums.items()})
                self._extra_sums, self._extra_n = {}, 0
            super().log(logs, start_time)

        def _save(self, output_dir=None, state_dict=None):
            if not self.args.should_save:  # only the main process writes (accelerate launch)
                return
            output_dir = output_dir or self.args.output_dir
            assert output_dir is not None  # TrainingArguments always has one (the run folder)
            output_dir = Path(output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            self.method.save_trainables(output_dir)
            (output_dir / "training_args.json").write_text(self.args.to_json_string())

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            self.method.load_trainables(Path(resume_from_checkpoint))

    class MetricsCallback(TrainerCallback):
        """Append every training log with a loss to ``metrics.jsonl``; keep the end-of-run stats."""

        def __init__(self, run: RunFolder):
            self.run, self.final = run, {}

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if "loss" in logs:
                self.run.append_metrics({"step": state.global_step, **{k: _num(v) for k, v in logs.items()}})
            elif "train_runtime" in logs:
                self.final = {k: _num(v) for k, v in logs.items()}

    class NoFinalCheckpoint(TrainerCallback):
        """Skip the Trainer's checkpoint after the last step unless ``save_steps`` asks for it there:
        the final artifacts are written right after it (for full fine-tuning the checkpoint would be
        1.6 GB of weights and optimizer state nobody resumes from)."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps and state.global_step % max(1, int(args.save_steps)):
                control.should_save = False
            return control

    return WorkbenchTrainer, MetricsCallback, NoFinalCheckpoint


def _num(v):
    return float(v) if isinstance(v, (int, float, torch.Tensor)) and not isinstance(v, bool) else v


def _versions() -> dict:
    import peft
    import transformers

    from .. import __version__

    return {"workbench": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


def _is_main() -> bool:
    """The process that writes files (rank 0 under ``accelerate launch`` / torchrun)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _cpu_processes() -> int:
    """How many processes train together without a GPU (``WORLD_SIZE`` under torchrun); 1 on GPUs."""
    import os

    return 1 if torch.cuda.is_available() else int(os.environ.get("WORLD_SIZE", "1"))


def _prepare_run_dir(run_dir: Path, recipe: Recipe) -> str | None:
    """Create / check the run folder; return the checkpoint to resume from, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    resume = recipe.resume_from_checkpoint
    if resume:
        ckpt = get_last_checkpoint(str(run_dir)) if resume is True else str(resume)
        if ckpt is None or not Path(ckpt).is_dir():
            raise RecipeError(f"resume_from_checkpoint={resume!r}: no checkpoint found "
                              f"{'in ' + str(run_dir) if resume is True else ''}")
        return ckpt
    if not _is_main():  # rank 0 checks and clears the folder; another rank would see its first writes
        return None
    if run_dir.exists() and any(run_dir.iterdir()):
        if not recipe.overwrite_output_dir:
            raise RecipeError(f"output_dir {run_dir} is not empty; set overwrite_output_dir: true to replace it "
                              f"or resume_from_checkpoint: true to continue its run")
        if not (run_dir / CONFIG_FILE).is_file():
            raise RecipeError(f"output_dir {run_dir} is not empty and is not a workbench run folder; "
                              f"refusing to delete it")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def train(recipe, wb=None, callbacks: Sequence = (), progress: bool = True) -> TrainResult:
    """Run one recipe (a YAML path, dict or :class:`Recipe`) and return a :class:`TrainResult`.

    ``wb``: an already loaded :class:`~workbench.Workbench` to train **in place** (default: load
    ``model_name_or_path``): afterwards it holds the trained model and ``wb.trained_by`` names the
    run; training its weights again is an error (load a fresh one; LoFIT, which trains hooks on the
    frozen model, can follow another LoFIT phase on the same one). ``callbacks``: extra
    ``transformers.TrainerCallback`` s.
    """
    from transformers import set_seed

    from ..model import Workbench

    recipe = load_recipe(recipe)
    run_dir = Path(recipe.output_dir)
    resume = _prepare_run_dir(run_dir, recipe)
    set_seed(recipe.seed)
    if wb is None:
        wb = Workbench.load(recipe.model_name_or_path, system_prompt=recipe.system_prompt)
    else:
        if recipe.model_name_or_path != wb.model_id:
            raise RecipeError(f"model_name_or_path is {recipe.model_name_or_path!r} but the given Workbench holds "
                              f"{wb.model_id!r}")
        if getattr(wb, "trained_by", None) is not None:
            raise RecipeError(f"this Workbench was already changed in place by the training run {wb.trained_by}; "
                              f"train on a fresh one (Workbench.load) or leave wb unset")
        if recipe.system_prompt is not None and wb.chat.system_prompt != recipe.system_prompt:
            raise RecipeError(f"the recipe's system_prompt {recipe.system_prompt!r} differs from the given "
                              f"Workbench's {wb.chat.system_prompt!r}")

    records = sft_data.build_records(recipe, wb)
    examples = sft_data.encode(wb, records, recipe.cutoff_len, recipe.answer_weight, recipe.answer_weight_tokens)
    method = make_method(wb, recipe, records)
    if method.changes_weights:  # LoFIT leaves the weights alone (its interventions are hooks)
        wb.trained_by = run_dir
    try:
        return _train(recipe, wb, method, records, examples, run_dir, resume, callbacks, progress)
    finally:
        wb.model.eval()
        method.cleanup()


def _train(recipe, wb: Workbench, method, records, examples, run_dir, resume, callbacks, progress) -> TrainResult:
    from transformers import TrainingArguments, set_seed

    set_seed(recipe.seed)  # direction capture must not shift the parameter init
    method.prepare()
    if recipe.warm_start_from:
        method.warm_start(Path(recipe.warm_start_from))
    hooks = method.training_hooks()
    if hooks is not None and not wb.backend.persistent_hooks:
        raise RecipeError(f"finetuning_type {recipe.finetuning_type!r} installs hooks during training, which "
                          f"needs the transformer_lens backend (this Workbench uses {wb.backend.name!r})")
    module = TrainModule(method.core, method.extras, pack=recipe.packing)
    n_trainable, n_total = count_parameters(module)
    if n_trainable == 0:
        raise RecipeError("nothing to train: no parameter requires grad")
    log.info("%s%s: trainable parameters %s of %s (%.4f%%); %d examples", recipe.finetuning_type,
             "/" + recipe.lofit_component if recipe.lofit_component else "", f"{n_trainable:,}", f"{n_total:,}",
             100 * n_trainable / n_total, len(examples))

    run = RunFolder(run_dir)
    if resume is None and _is_main():
        config = {"created": datetime.now(UTC).isoformat(timespec="seconds"),
                  "model_id": wb.model_id, "recipe": recipe.to_dict(), "method": method.info,
                  "n_trainable": n_trainable, "n_total": n_total, "n_records": len(records),
                  "n_examples": len(examples), "data_hash": sft_data.records_hash(records),
                  "hooks_during_training": repr(hooks) if hooks is not None else None,
                  "versions": _versions()}
        run.write_config(config)
        from .coca import write_jsonl

        write_jsonl(records, run / DATA_FILE)
    elif resume is not None and _is_main():
        run.truncate_metrics(int(Path(resume).name.rsplit("-", 1)[-1]))

    args = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=recipe.per_device_train_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps, learning_rate=recipe.learning_rate,
        num_train_epochs=recipe.num_train_epochs, max_steps=recipe.max_steps,
        lr_scheduler_type=recipe.lr_scheduler_type, warmup_steps=recipe.warmup_ratio,
        weight_decay=recipe.weight_decay, max_grad_norm=recipe.max_grad_norm, seed=recipe.seed,
        data_seed=recipe.seed, logging_steps=recipe.logging_steps, save_strategy="steps",
        save_steps=recipe.save_steps, save_total_limit=recipe.save_total_limit, report_to=recipe.report_to,
        remove_unused_columns=False, dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not progress, label_names=["labels"], optim="adamw_torch_fused",
        # without a GPU: CPU processes, gloo between them (torchrun --nproc_per_node N gives data parallelism)
        use_cpu=not torch.cuda.is_available(), ddp_backend="gloo" if _cpu_processes() > 1 else None,
        train_sampling_strategy="group_by_length" if recipe.group_by_length else "random", bf16=recipe.bf16)
    WorkbenchTrainer, MetricsCallback, NoFinalCheckpoint = _trainer_classes()
    metrics_cb = MetricsCallback(run)
    trainer = WorkbenchTrainer(model=module, args=args, train_dataset=sft_data.SFTDataset(examples),
                               data_collator=sft_data.Collator(wb.tokenizer.pad_token_id),
                               callbacks=[metrics_cb, NoFinalCheckpoint(), *callbacks], method=method)
    t0 = time.perf_counter()
    try:
        with wb.hooks(hooks) if hooks is not None else nullcontext():
            trainer.train(resume_from_checkpoint=resume)
    finally:
        wb.model.eval()
        module.eval()
    elapsed = time.perf_counter() - t0

    deployed = method.deployed()
    if not trainer.args.should_save:  # other ranks: no files
        return TrainResult(run_dir=run_dir, wb=wb, method=method,
                           deployed=Compose(*([deployed] if deployed is not None else [])),
                           n_trainable=n_trainable, n_total=n_total)
    extra = method.finalize(run_dir)
    metrics = read_metrics(run_dir)
    losses = [m["loss"] for m in metrics if "loss" in m]
    summary = {"finetuning_type": recipe.finetuning_type, "n_trainable": n_trainable, "n_total": n_total,
               "steps": trainer.state.global_step, "first_loss": losses[0] if losses else None,
               "last_loss": losses[-1] if losses else None, "wall_s": round(elapsed, 2),
               "resumed_from": resume, **metrics_cb.final, **extra}
    run.write_summary(summary)
    if recipe.plot_loss and losses:
        write_loss_svg(metrics, run_dir / "loss_curve.svg", title=f"{recipe.finetuning_type}: {run_dir.name}")
    return TrainResult(run_dir=run_dir, wb=wb, method=method,
                       deployed=Compose(*([deployed] if deployed is not None else [])),
                       metrics=metrics, n_trainable=n_trainable, n_total=n_total)


def run_recipe(recipe, wb=None) -> Path:
    """Train from a recipe (YAML path or dict); return the run folder. ``workbench train`` calls this."""
    return train(recipe, wb=wb).run_dir


def write_loss_svg(metrics: list[dict], path: str | Path, title: str = "loss") -> Path:
    """A dependency-free SVG line plot of loss per step."""
    pts = [(m["step"], m["loss"]) for m in metrics if "loss" in m and math.isfinite(m["loss"])]
    w, h, pad = 480, 280, 40
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def sx(x):
        return pad + (x - x0) / (x1 - x0) * (w - 2 * pad)

    def sy(y):
        return h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad)

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">'
           f'<rect width="{w}" height="{h}" fill="white"/>'
           f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">{title}</text>'
           f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>'
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>'
           f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle">step ({x0}-{x1})</text>'
           f'<text x="4" y="{pad}">{y1:.3g}</text><text x="4" y="{h - pad}">{y0:.3g}</text>'
           f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{line}"/></svg>')
    path = Path(path)
    path.write_text(svg)
    return path
