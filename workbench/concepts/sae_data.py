"""Activations for SAE training: shuffled batches streamed from an ActivationStore
(:class:`ActivationSource`, skipping each record's fixed chat-template prefix), and the store of
every token of dataset prompts and responses (:func:`build_training_store`)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open

if TYPE_CHECKING:
    from ..model import Workbench

DEFAULT_SITE = "blocks.15.hook_resid_post"
# Text sources for a general-purpose SAE on the default model: harmful, sensitive, benign and
# capability prompts, with reference answers where a dataset has them.
DEFAULT_DATASETS = ("advbench", "harmbench", "donotanswer_harmful", "donotanswer_sensitive", "benign_instructions",
                    "overrefusal", "gsm8k", "humaneval", "mmlu", "uncensorbench")


def row_positions(record_index: torch.Tensor) -> torch.Tensor:
    """Token position of each row within its record (rows of one record are contiguous)."""
    n = record_index.shape[0]
    if n == 0:
        return record_index.clone()
    starts = torch.ones(n, dtype=torch.bool)
    starts[1:] = record_index[1:] != record_index[:-1]
    first = torch.cummax(torch.where(starts, torch.arange(n), torch.zeros(n, dtype=torch.long)), 0).values
    return torch.arange(n) - first


def common_prefix_length(wb: Workbench) -> int:
    """Tokens every chat-formatted prompt of ``wb`` starts with (SmolLM2: its default system
    prompt, ~20 tokens); SAEs skip them, they are the same in every record."""
    a = wb.tokenize(["Hello there."]).input_ids[0].tolist()
    b = wb.tokenize(["What is 2 + 2? x"]).input_ids[0].tolist()
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _eval_records(n_records: int, eval_fraction: float, seed: int) -> torch.Tensor:
    """``[n_records]`` bool: records held out for evaluation (seeded)."""
    g = torch.Generator().manual_seed(seed + 1)
    n_eval = int(round(n_records * eval_fraction))
    if eval_fraction > 0 and n_records > 1:
        n_eval = min(max(n_eval, 1), n_records - 1)
    mask = torch.zeros(n_records, dtype=torch.bool)
    mask[torch.randperm(n_records, generator=g)[:n_eval]] = True
    return mask


class ActivationSource:
    """Rows of one site, split by record into train / eval, with the first ``skip_first`` tokens of
    every record dropped. Built from an ActivationStore (streamed shard by shard) or a tensor."""

    def __init__(self, source, site: str | None = None, *, eval_fraction: float = 0.1, skip_first: int = 0,
                 seed: int = 0, record_index: torch.Tensor | None = None):
        from ..activations import ActivationStore

        self.skip_first, self.seed = skip_first, seed
        if isinstance(source, (str, os.PathLike)):
            source = ActivationStore(source)
        if isinstance(source, ActivationStore):
            if site is None:
                if len(source.sites) != 1:
                    raise ValueError(f"the store has several sites {source.sites}; name one with site=")
                site = source.sites[0]
            if site not in source.sites:
                raise KeyError(f"site {site!r} is not in the store; it has {source.sites}")
            self.store, self.tensor = source, None
            self.model_id = source.manifest.get("model_id")
            self.dataset_fingerprint = source.manifest.get("dataset_fingerprint")
            n_records = int(source.manifest.get("n_records") or len(source.record_ids))
            with safe_open(str(source.path / source.manifest["shards"][0]["file"]), framework="pt") as f:
                shape = f.get_slice(site).get_shape()
            self.d_in = math.prod(shape[1:])
        else:
            x = torch.as_tensor(source)
            if site is None:
                raise ValueError("a tensor source needs its site name: site='blocks.L.hook_resid_post'")
            self.store, self.tensor = None, x.reshape(x.shape[0], -1).float()
            self.model_id = self.dataset_fingerprint = None
            self.record_index = record_index if record_index is not None else torch.arange(x.shape[0])
            n_records = int(self.record_index.max()) + 1 if len(self.record_index) else 0
            self.d_in = self.tensor.shape[1]
        self.site = site
        self.eval_mask = _eval_records(n_records, eval_fraction, seed)

    def _load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.store is None:
            assert self.tensor is not None  # a tensor source
            return self.tensor, self.record_index
        shard = self.store.manifest["shards"][i]
        with safe_open(str(self.store.path / shard["file"]), framework="pt") as f:
            x, ri = f.get_tensor(self.site), f.get_tensor("record_index")
        return x.reshape(x.shape[0], -1).float(), ri

    def _filter(self, x: torch.Tensor, ri: torch.Tensor, held_out: bool) -> torch.Tensor:
        keep = self.eval_mask[ri] == held_out
        if self.skip_first:
            keep &= row_positions(ri) >= self.skip_first
        return x[keep]

    @property
    def n_shards(self) -> int:
        return 1 if self.store is None else len(self.store.manifest["shards"])

    def eval_rows(self, max_rows: int | None = None) -> torch.Tensor:
        """Held-out rows (records never trained on), at most ``max_rows`` (evenly spaced)."""
        parts = [self._filter(*self._load(i), held_out=True) for i in range(self.n_shards)]
        x = torch.cat(parts) if parts else torch.zeros(0, self.d_in)
        if max_rows is not None and x.shape[0] > max_rows:
            x = x[torch.linspace(0, x.shape[0] - 1, max_rows).long()]
        return x

    def count_train_rows(self) -> int:
        return sum(self._filter(*self._load(i), held_out=False).shape[0] for i in range(self.n_shards))

    def batches(self, batch_size: int, buffer_shards: int = 4, loop: bool = True) -> Iterator[torch.Tensor]:
        """Shuffled ``[batch_size, d]`` training batches, forever (``loop``): shards in a seeded random
        order, ``buffer_shards`` of them mixed at a time, rows shuffled within the buffer."""
        g = torch.Generator().manual_seed(self.seed)
        pending = torch.zeros(0, self.d_in)
        while True:
            order = torch.randperm(self.n_shards, generator=g).tolist()
            for lo in range(0, len(order), buffer_shards):
                parts = [pending] + [self._filter(*self._load(i), held_out=False) for i in order[lo:lo + buffer_shards]]
                x = torch.cat(parts)
                x = x[torch.randperm(x.shape[0], generator=g)]
                full = x.shape[0] // batch_size * batch_size
                for b in range(0, full, batch_size):
                    yield x[b:b + batch_size]
                pending = x[full:]
            if not loop:
                if pending.shape[0]:
                    yield pending
                return


def build_training_store(folder: str | os.PathLike, wb: Workbench, site: str = DEFAULT_SITE,
                         datasets: Sequence[str] = DEFAULT_DATASETS, max_records: int | None = None,
                         max_chars: int = 2500, split: str | None = "train", with_responses: bool = True,
                         batch_size: int = 8, progress: bool = True):
    """An :class:`~workbench.ActivationStore` of every token (``position="all"``) of dataset prompts
    (and their reference responses, as the assistant turn, where a dataset has them) at ``site``.

    ``max_records`` caps the records per dataset; prompts longer than ``max_chars`` are skipped.
    Resumable like any store."""
    from ..activations import ActivationStore
    from ..data import load_dataset

    prompts, responses, ids, labels = [], [], [], []
    for name in datasets:
        recs = [r for r in load_dataset(name, split=split) if len(r.prompt) + len(r.response or "") <= max_chars]
        for r in recs[:max_records]:
            prompts.append(r.prompt)
            responses.append(r.response if (with_responses and r.response) else "")
            ids.append(r.id)
            labels.append(r.label)
    if not with_responses or not any(responses):
        responses = None
    return ActivationStore.build(folder, wb, prompts, [site], position="all", labels=labels, ids=ids,
                                 responses=responses, batch_size=batch_size, progress=progress)
