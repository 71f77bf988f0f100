"""What fine-tuning generalizes to: CAFT and preventative steering on spurious-correlation tasks.

>>> from workbench.generalization import run_generalization
>>> run_generalization("examples/caft_gender.yaml", quick=True)     # -> report.html
"""

from .experiment import GeneralizationError, GeneralizationExperiment, is_generalization_file, run_generalization
from .selection import attribute_scores, complement, leakage_check, probe_accuracy, probe_pick

__all__ = ["GeneralizationExperiment", "GeneralizationError", "run_generalization", "is_generalization_file",
           "attribute_scores", "probe_pick", "leakage_check", "probe_accuracy", "complement"]
