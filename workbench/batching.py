"""Which prompts share a generation batch: groups that share a long prefix (a jailbreak template
wrapping many requests) run together, so :func:`workbench.generation.greedy_decode` computes the
template once per batch instead of once per prompt; the rest are batched by length (less padding).

The plan minimizes a cost in prefill-token equivalents over contiguous batches of one order,
by dynamic programming: a batch costs its shared prefix once, every row's padded rest
(``rows x (longest - prefix)``), and ``step_tokens x max_new_tokens`` for its decode loop: a decode
step's fixed cost (the per-row part is paid under any split, so it does not enter).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._forward import MIN_SHARED_PREFIX

# A decode step's fixed cost (its time at batch 1) in prefilled tokens of SmolLM2-135M on 2 CPU
# cores: 80 ms / 2.03 ms measured by ``python bench/eval_generate.py --size 48``.
STEP_TOKENS = 40
GROUP_MIN = 16  # tokens beyond the prefix every prompt shares that make a group worth keeping together


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _order(ids: Sequence[Sequence[int]]) -> list[int]:
    """Prompts that share ``GROUP_MIN`` tokens more than all do, each group by length, then the rest by length."""
    lex = sorted(range(len(ids)), key=lambda i: tuple(ids[i]))
    lcps = [_lcp(ids[a], ids[b]) for a, b in zip(lex, lex[1:])]  # each prompt's with the next, in lex order
    common = min(lcps, default=0)
    groups: list[list[int]] = [[lex[0]]] if lex else []
    for b, lcp in zip(lex[1:], lcps):
        if lcp >= common + GROUP_MIN:
            groups[-1].append(b)
        else:
            groups.append([b])
    rest = sorted((g[0] for g in groups if len(g) == 1), key=lambda i: len(ids[i]))
    by_len = [sorted(g, key=lambda i: len(ids[i])) for g in groups if len(g) > 1]
    return [i for g in by_len for i in g] + rest


def plan_batches(ids: Sequence[Sequence[int]], batch_size: int, max_new_tokens: int,
                 step_tokens: float = STEP_TOKENS) -> list[list[int]]:
    """Indices of ``ids`` (each prompt's token ids) split into batches of at most ``batch_size``,
    every index once: the cheapest contiguous split of :func:`_order` under the module's cost."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = _order(ids)
    n = len(order)
    nxt = [_lcp(ids[a], ids[b]) for a, b in zip(order, order[1:])]  # each row's common prefix with the next
    step_cost = step_tokens * max(max_new_tokens, 1)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest plan of order[:j]
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest, shortest, prefix = 0, 1 << 62, 1 << 62
        for i in range(j - 1, max(j - batch_size, 0) - 1, -1):  # the batch order[i:j], grown leftwards
            row = ids[order[i]]
            longest, shortest = max(longest, len(row)), min(shortest, len(row))
            if i < j - 1:
                prefix = min(prefix, nxt[i])
            shared = min(prefix, shortest - 1) if i < j - 1 else 0
            shared = shared if shared >= MIN_SHARED_PREFIX else 0
            cost = best[i] + shared + (j - i) * (longest - shared) + step_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches, j = [], n
    while j > 0:
        batches.append(order[cut[j]:j])
        j = cut[j]
    return batches[::-1]
