"""The end-to-end experiment: one command from the untouched model to a comparison report.

    workbench experiment examples/safety.yaml [--quick] [--out DIR] [--seeds 0,1,2]

It answers the COCA question on one model: did the intervention change how the model represents
and acts on harmful requests, does it hold against jailbreaks it never saw, and what did it cost?
Steps (:mod:`.steps`), each writing files of the experiment folder (a finished step is skipped when
the experiment runs again, so an interrupted experiment resumes where it stopped):

1. ``activations/``: length-matched harmful vs benign prompts (train split) -> ActivationStore;
2. ``probes/``: the linear-probe sweep over every cached site, with its bag-of-words baseline
   (``lexical.json``, the dotted line of ``probe_accuracy.html``); ``probes_twins/``: the same on
   style-matched twins (``twins_harmful`` / ``twins_benign``), where wording cannot carry the labels;
3. ``concepts/``: the difference-of-means ConceptSet at ``concept_layers``; CAFT recipes that ask for
   ``caft_directions: diffmeans`` and name no ``caft_concepts`` ablate these;
4. ``train/``: every method's recipes, in order (a method is a chain: LoFIT = head selection, then
   bias tuning); ``output_dir``, ``lofit_heads_path`` and ``warm_start_from`` are rewired into the
   experiment folder, ``train_overrides`` applied to each, the seed added to each recipe's;
5. ``eval/{model}/``: the safety suites (:mod:`workbench.evals`) for the untouched model and each method;
6. ``erasure/{model}/``: on held-out (test split) prompts, probe accuracy at ``erasure_layers``
   before and after LEACE, and the 1-D difference-of-means accuracy (how concentrated the concept is);
7. ``transfer/{model}.json``: a probe fit on the plain held-out prompts, scored on the same prompts
   inside jailbreak templates (does the harm signal survive the wrapper?);
8. ``refusal/{method}.json``: Arditi et al.'s refusal direction of each trained model and its ID
   refusal with the direction ablated (how much of the learned refusal one direction carries);
9. ``judges.json``: the refusal judges' precision / recall against UncensorBench's human labels;
10. ``report.html`` (every suite, every model, with samples), ``results.md``, ``results.json`` and
    ``losses.html``. With ``seeds``, steps 1-8 run per seed in ``seed{s}/`` and the results are
    pooled, the paired tests over every seed's prompts.
"""

from .config import BASELINE, Experiment, ExperimentError, plan_training
from .runner import run_experiment
from .steps import Step, write_probe_sweep

__all__ = ["BASELINE", "Experiment", "ExperimentError", "Step", "plan_training", "run_experiment", "write_probe_sweep"]
