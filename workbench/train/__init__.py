"""Hook-based fine-tuning: one training path (HF Trainer) for LoRA, full, LoFIT and CAFT, COCA data,
YAML recipes.

>>> from workbench.train import run_recipe
>>> run_dir = run_recipe("examples/caft/diffmeans.yaml")

Read top-down: :mod:`~workbench.train.recipe` (the keys) -> :mod:`~workbench.train.data` (records
to tokens) -> :mod:`~workbench.train.methods` (one class per ``finetuning_type``: ``lora``,
``full``, ``lofit``, ``caft``) -> :mod:`~workbench.train.trainer` (the HF Trainer loop) ->
:mod:`~workbench.train.run_folder` (what a run writes). :mod:`~workbench.train.coca` builds COCA's
data.
"""

from . import coca
from .errors import RecipeError, RunFolderError
from .methods import apply_run, caft, count_parameters, load_adapter, load_heads_file, lofit, save_adapter, save_heads_file
from .methods.caft import load_concepts, save_concepts
from .recipe import Recipe, load_recipe
from .run_folder import RunFolder, read_metrics, read_run_config
from .trainer import TrainResult, run_recipe, train

__all__ = ["Recipe", "RecipeError", "load_recipe", "run_recipe", "train", "TrainResult", "apply_run",
           "RunFolder", "read_metrics", "read_run_config", "RunFolderError", "coca", "caft", "lofit",
           "load_heads_file", "save_heads_file", "load_adapter", "save_adapter",
           "count_parameters", "load_concepts", "save_concepts"]
