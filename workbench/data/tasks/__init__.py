"""Generated tasks for studying what fine-tuning generalizes to (CAFT's settings).

Unlike the registry's datasets these are built by code, seeded, with disjoint sentence frames /
lexicons between ``train`` and the test splits (``id_test``: same distribution, ``ood_test``: the
spurious cue points at the wrong answer). ``load_dataset`` knows them by name:

>>> from workbench.data import load_dataset
>>> train = load_dataset("gender_pronoun", split="train", limit=300)
>>> ood = load_dataset("double_mc:agreement-sentiment", split="ood_test", limit=100)
"""

from __future__ import annotations

from ..registry import Record
from .double_mc import QUESTION_TYPES, double_mc, single_task
from .gender import PROFESSIONS, gender_task

TASK_SPLITS = ("train", "id_test", "ood_test")
TASKS = ("gender_pronoun", "double_mc", "single")


def is_task(name: str) -> bool:
    return name.split(":", 1)[0] in TASKS


def load_task(name: str, split: str = "train", n: int | None = None, seed: int = 0, **options) -> list[Record]:
    """Records of a generated task: ``gender_pronoun`` (options of :func:`gender_task`),
    ``double_mc:{intended}-{spurious}`` (see :func:`double_mc`) or ``single:{type}``, one question
    type alone (:func:`single_task`; ``id_test`` and ``ood_test`` are the same held-out items):
    the learnability check of a type before it is paired."""
    base, _, arg = name.partition(":")
    if split not in TASK_SPLITS:
        raise ValueError(f"task {name!r} has splits {TASK_SPLITS}, not {split!r}")
    if base == "gender_pronoun":
        return gender_task(split, n=n, seed=seed, **options)
    if base == "double_mc":
        pair = arg.split("-")
        if len(pair) != 2:
            raise ValueError(f"name the pair as 'double_mc:{{intended}}-{{spurious}}' with types from "
                             f"{sorted(QUESTION_TYPES)}, not {name!r}")
        return double_mc(pair[0], pair[1], split, n=n or 400, seed=seed)
    if base == "single":
        return single_task(arg, "train" if split == "train" else "test", n=n or 200, seed=seed)
    raise ValueError(f"unknown task {name!r}; known: {TASKS}")


__all__ = ["TASKS", "TASK_SPLITS", "PROFESSIONS", "is_task", "load_task", "gender_task", "double_mc",
           "single_task", "QUESTION_TYPES"]
