"""Benchmark: the evaluation's scoring suites in batches of similar length vs batches in the suite's
own order (the previous path, each batch padded to its longest prompt), same model, same run,
rounds interleaved. MMLU (next-token log-probabilities; ``Workbench.next_token_logits`` sorts by
length) and the perplexity of reference answers (``suites._perplexity`` keeps the suite's order:
sorting it measured 0.94x on 2026-12-06). Prints the time ratios and how far the two paths'
numbers are apart (the MMLU picks must agree).

    python bench/eval_score.py [--size full] [--seeds 0,1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="full")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--batch-size", type=int, default=64)  # evaluate's
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from workbench import Workbench
    from workbench.evals import suites as S

    wb = Workbench.load()
    size = int(args.size) if args.size.isdigit() else args.size
    mmlu, ppl = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        built = S.build_suites(size, seed=seed)
        mmlu += built["mmlu"].records
        ppl += built["perplexity"].records
    prompts = [f"{r.prompt}\nAnswer with the letter of the correct option." for r in mmlu]
    lengths = [len(wb.tokenize([p]).input_ids[0]) for p in prompts]
    print(f"MMLU: {len(prompts)} prompts, {sum(lengths)} tokens ({min(lengths)}-{max(lengths)}), batch {args.batch_size}; "
          f"perplexity: {len(ppl)} records")

    def unsorted_scores() -> torch.Tensor:  # one call per batch of the suite's order: no sorting across batches
        return torch.cat([wb.next_token_logprobs(prompts[lo:lo + args.batch_size], list("ABCD"), batch_size=args.batch_size)
                          for lo in range(0, len(prompts), args.batch_size)])

    def sorted_scores() -> torch.Tensor:
        return wb.next_token_logprobs(prompts, list("ABCD"), batch_size=args.batch_size)

    def ppl_unsorted() -> float:  # the suite's order (today's path)
        return S._perplexity(wb, S.Suite("perplexity", "perplexity", ppl), args.batch_size)["value"]

    def ppl_sorted() -> float:
        by_length = sorted(ppl, key=lambda r: len(r.prompt) + len(r.response or ""))
        return S._perplexity(wb, S.Suite("perplexity", "perplexity", by_length), args.batch_size)["value"]

    runs = {"mmlu, suite order": unsorted_scores, "mmlu, by length": sorted_scores,
            "perplexity, suite order": ppl_unsorted, "perplexity, by length": ppl_sorted}
    times: dict[str, list[float]] = {k: [] for k in runs}
    out: dict[str, object] = {}
    for r in range(args.rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):  # alternate which path runs first
            t0 = time.perf_counter()
            out[name] = runs[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:26s} {v:7.2f} s (rounds: {', '.join(f'{t:.2f}' for t in times[k])})")
    a, b = out["mmlu, suite order"], out["mmlu, by length"]
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    same = int((a.argmax(-1) == b.argmax(-1)).sum())
    print(f"MMLU: by length {med['mmlu, suite order'] / med['mmlu, by length']:.2f}x; picks identical {same}/{len(a)}; "
          f"max |log-prob difference| {float((a - b).abs().max()):.2e}")
    pa, pb = out["perplexity, suite order"], out["perplexity, by length"]
    print(f"perplexity: by length {med['perplexity, suite order'] / med['perplexity, by length']:.2f}x; "
          f"{pa:.6f} vs {pb:.6f}")
    if same != len(a):
        raise SystemExit("the two MMLU paths pick different letters")


if __name__ == "__main__":
    main()
