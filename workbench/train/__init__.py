"""Hook-based fine-tuning: one training path (HF Trainer) for LoRA, full, LoFIT and CAFT, COCA data,
YAML recipes.

>>> from workbench.train import run_recipe
>>> run_dir = run_recipe("examples/caft/diffmeans.yaml")

See :mod:`workbench.train.trainer` for the run folder, :mod:`workbench.train.recipe` for the keys,
:mod:`workbench.train.lofit`, :mod:`workbench.train.caft` and :mod:`workbench.train.coca` for the
methods.
"""

from . import coca
from .caft import diffmeans_directions, load_concepts, pca_directions, random_directions, save_concepts
from .lofit import load_heads_file, save_heads_file
from .methods import count_parameters, load_adapter, save_adapter
from .recipe import Recipe, RecipeError, load_recipe
from .trainer import RunFolderError, TrainResult, apply_run, read_metrics, read_run_config, run_recipe, train

__all__ = ["Recipe", "RecipeError", "load_recipe", "run_recipe", "train", "TrainResult", "apply_run",
           "read_metrics", "read_run_config", "RunFolderError", "coca", "load_heads_file", "save_heads_file",
           "load_adapter", "save_adapter",
           "count_parameters", "diffmeans_directions", "random_directions", "pca_directions",
           "load_concepts", "save_concepts"]
