"""Deterministic splits, dataset loading with split filters, and harmful-vs-benign pools.

A record's split comes from a seeded sha256 hash of its id, so it never depends on which
other records are loaded, and no prompt sits in two splits.
"""
from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import replace

from . import registry
from .registry import Record

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


def assign_split(record_id: str, seed: int = 0,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a record id, from a seeded sha256 hash."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    digest = hashlib.sha256(f"{seed}\x00{record_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def split_key(rec: Record) -> str:
    """What a record's split is drawn from: its id, or its pair's key (``meta["pair"]``, e.g. the
    twins datasets) so that both members of a pair land in the same split."""
    return rec.meta.get("pair") or rec.id


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS} or None")


def _copy(rec: Record, **changes) -> Record:
    """A record whose meta dict is not the cached one (its values are immutable)."""
    changes.setdefault("meta", dict(rec.meta))
    return replace(rec, **changes)


def load_dataset(name: str, split: str | None = None, seed: int = 0, limit: int | None = None,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS) -> list[Record]:
    """Records of a registered dataset, in file order.

    ``split`` keeps one of ``SPLITS`` (by :func:`assign_split` with ``seed``/``fractions``);
    ``limit`` keeps the first ``limit`` records after that. An empty result is an error.
    Generated tasks (``gender_pronoun``, ``double_mc:{a}-{b}``, see :mod:`workbench.data.tasks`)
    have the splits ``train`` / ``id_test`` / ``ood_test`` (``limit`` = number of records).
    """
    from . import tasks

    if tasks.is_task(name):
        return tasks.load_task(name, split or "train", n=limit, seed=seed)
    _check_split(split)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    records = registry._load_raw(name)
    if split is not None:
        records = [r for r in records if assign_split(split_key(r), seed, fractions) == split]
    records = records[:limit] if limit is not None else records
    if not records:
        raise ValueError(f"dataset {name!r} is empty with split={split!r}, seed={seed}, "
                         f"limit={limit}; loosen the filter")
    return [_copy(r) for r in records]


class RecordList(list):
    """A list of records with summary statistics in ``.stats``."""

    stats: dict


def _pool(names: str | Iterable[str], label: int, cls: str, split: str | None, seed: int,
          exclude: set[str]) -> list[Record]:
    """Records of ``names`` relabelled ``label``, deduplicated on the prompt (before the split
    filter, so a prompt shared by two sources lands in one split only)."""
    names = (names,) if isinstance(names, str) else tuple(names)
    seen, out = set(exclude), []
    for name in names:
        for rec in registry._load_raw(name):
            if rec.prompt in seen:
                continue
            seen.add(rec.prompt)
            if split is None or assign_split(split_key(rec), seed) == split:
                out.append(_copy(rec, label=label))
    if not out:
        raise ValueError(f"harmful_vs_benign: the {cls} class is empty (sources={names}, "
                         f"split={split!r}); name at least one {cls} dataset with records")
    return out


def _nearest_length(anchors: list[Record], pool: list[Record]) -> list[Record]:
    """Greedy nearest-character-length partner for each anchor, without replacement."""
    pool = sorted(pool, key=lambda r: len(r.prompt))
    lengths = [len(r.prompt) for r in pool]
    partners = []
    for rec in anchors:
        n = len(rec.prompt)
        i = bisect.bisect_left(lengths, n)
        j = min((k for k in (i - 1, i) if 0 <= k < len(pool)), key=lambda k: abs(lengths[k] - n))
        partners.append(pool.pop(j))
        lengths.pop(j)
    return partners


def _mean_length(records: list[Record]) -> float:
    return sum(len(r.prompt) for r in records) / len(records)


def harmful_vs_benign(harmful: str | Iterable[str] = ("advbench", "harmbench"),
                      benign: str | Iterable[str] = ("benign_instructions",),
                      n_per_class: int | None = None, split: str | None = None, seed: int = 0,
                      match_lengths: bool = False, length_tolerance: float = 0.2, twins: bool = False) -> RecordList:
    """A balanced, shuffled pool of harmful (label 1) and benign (label 0) prompts.

    ``n_per_class`` defaults to the smaller class size; records are sampled with ``seed``.
    With ``match_lengths`` every prompt of the smaller class (in seeded random order) is
    paired with the unused prompt of the other class nearest in character length (greedy,
    without replacement) and the ``n_per_class`` closest pairs are kept, so prompt length
    cannot separate the classes; partners are in ``meta["pair_id"]``. There, a ``None``
    ``n_per_class`` keeps every pair whose lengths differ by at most ``length_tolerance``
    (relative to the longer prompt). With ``twins`` each harmful prompt is paired with its benign
    twin of the same form (records sharing ``meta["pair"]``, e.g. ``twins_harmful`` /
    ``twins_benign``), so only the harmful content separates the classes; a ``None``
    ``n_per_class`` keeps every pair. ``.stats`` holds the per-class mean lengths and gap.
    """
    _check_split(split)
    harm = _pool(harmful, 1, "harmful", split, seed, set())
    good = _pool(benign, 0, "benign", split, seed, {r.prompt for r in harm})
    available = min(len(harm), len(good))
    n = available if n_per_class is None else n_per_class
    if n <= 0:
        raise ValueError(f"n_per_class must be positive, got {n_per_class}")
    if n > available:
        short = "harmful" if len(harm) < len(good) else "benign"
        raise ValueError(f"n_per_class={n} but the {short} class has only {available} records "
                         f"(split={split!r}); lower n_per_class")
    rng = random.Random(seed)
    if twins:
        by_pair = {r.meta.get("pair"): r for r in good if r.meta.get("pair")}
        pairs = [(h, by_pair[h.meta["pair"]]) for h in harm if h.meta.get("pair") in by_pair]
        if len(pairs) < n:
            raise ValueError(f"twins: {len(pairs)} harmful records of split={split!r} have a benign twin "
                             f"(meta['pair']), n_per_class={n}; use the twins_harmful / twins_benign datasets "
                             f"or lower n_per_class")
        pairs = rng.sample(pairs, n if n_per_class is not None else len(pairs))
        n = len(pairs)
        harm_sel = [_copy(h, meta={**h.meta, "pair_id": b.id}) for h, b in pairs]
        good_sel = [_copy(b, meta={**b.meta, "pair_id": h.id}) for h, b in pairs]
    elif match_lengths:
        small, large = (harm, good) if len(harm) <= len(good) else (good, harm)
        anchors = rng.sample(small, len(small))  # seeded order for the greedy matching
        pairs = [(a, p) if a.label == 1 else (p, a)
                 for a, p in zip(anchors, _nearest_length(anchors, large))]
        gap = [abs(len(h.prompt) - len(b.prompt)) for h, b in pairs]
        order = sorted(range(len(pairs)), key=gap.__getitem__)  # stable: ties in seeded order
        if n_per_class is None:
            order = [i for i in order if gap[i] <= length_tolerance * max(
                len(pairs[i][0].prompt), len(pairs[i][1].prompt))]
            if not order:
                raise ValueError(f"no harmful/benign pair within length_tolerance="
                                 f"{length_tolerance}; raise it or set n_per_class")
            n = len(order)
        pairs = [pairs[i] for i in order[:n]]
        harm_sel = [_copy(h, meta={**h.meta, "pair_id": b.id}) for h, b in pairs]
        good_sel = [_copy(b, meta={**b.meta, "pair_id": h.id}) for h, b in pairs]
    else:
        harm_sel, good_sel = rng.sample(harm, n), rng.sample(good, n)
    out = RecordList(harm_sel + good_sel)
    rng.shuffle(out)
    mean_h, mean_b = _mean_length(harm_sel), _mean_length(good_sel)
    out.stats = {"n_per_class": n, "split": split, "seed": seed, "match_lengths": match_lengths, "twins": twins,
                 "mean_length": {"harmful": mean_h, "benign": mean_b},
                 "length_gap": abs(mean_h - mean_b),
                 "available": {"harmful": len(harm), "benign": len(good)}}
    return out
