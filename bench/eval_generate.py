"""Benchmark: generation for the evaluation suites, batches planned by shared prefix
(``workbench.batching.plan_batches``: a jailbreak template's prompts run together and the template
is prefilled once per batch) vs fixed length-sorted chunks (the previous plan), same prompts, same
run, rounds interleaved; asserts both give the same answers. Also measures the planner's cost
constant: one decode step's time over one prefilled token's.

    python bench/eval_generate.py [--size full] [--suites ood_template,ood_encoding,id_harmful] [--rounds 3]
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
    ap.add_argument("--suites", default="ood_template,ood_encoding,ood_gcg,id_harmful")
    ap.add_argument("--batch-size", type=int, default=64)  # run_suite's
    ap.add_argument("--max-new-tokens", type=int, default=40)  # examples/safety.yaml's
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import workbench.model as model_module
    from workbench import Workbench
    from workbench.batching import STEP_TOKENS, plan_batches
    from workbench.evals.suites import build_suites
    from workbench.generation import eos_token_ids, greedy_decode

    wb = Workbench.load()
    size = int(args.size) if args.size.isdigit() else args.size
    suites = build_suites(size, seed=0)

    def length_chunks(ids, batch_size, max_new_tokens):
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        return [order[lo:lo + batch_size] for lo in range(0, len(ids), batch_size)]

    def run(prompts, planner):
        model_module.plan_batches = planner
        try:
            t0 = time.perf_counter()
            out = wb.generate(prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False)
            return out, time.perf_counter() - t0
        finally:
            model_module.plan_batches = plan_batches

    names = args.suites.split(",")
    times: dict[str, dict[str, list[float]]] = {s: {"chunks": [], "planned": []} for s in names}
    differ = dict.fromkeys(names, 0)
    for _ in range(args.rounds):
        for s in names:
            prompts = [r.prompt for r in suites[s].records]
            a, ta = run(prompts, length_chunks)
            b, tb = run(prompts, plan_batches)
            times[s]["chunks"].append(ta)
            times[s]["planned"].append(tb)
            differ[s] = sum(x != y for x, y in zip(a, b))
    print(f"suites at size {args.size}, batch {args.batch_size}, up to {args.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds (s)")
    total = {"chunks": 0.0, "planned": 0.0}
    for s in names:
        med = {k: statistics.median(v) for k, v in times[s].items()}
        total = {k: total[k] + med[k] for k in total}
        print(f"  {s:<14} n={len(suites[s]):<4} length chunks {med['chunks']:7.1f}  planned {med['planned']:7.1f}  "
              f"{med['chunks'] / med['planned']:5.2f}x   answers differing: {differ[s]}")
    print(f"  {'all':<14} {'':<6} length chunks {total['chunks']:7.1f}  planned {total['planned']:7.1f}  "
          f"{total['chunks'] / total['planned']:5.2f}x")

    # the planner's constant: a decode step's fixed cost (its time at batch 1; each row's own share is
    # paid under any split) over one prefilled token's time
    eos = eos_token_ids(wb.model, wb.tokenizer)
    long_prompt = " ".join(r.prompt for r in suites["ood_template"].records[:2])
    one = wb.tokenize([long_prompt], padding_side="right")
    short = wb.tokenize([suites["id_harmful"].records[0].prompt], padding_side="right")

    def timed(fn) -> float:
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    steps = 33
    prefill = timed(lambda: greedy_decode(wb.model, one.input_ids, one.attention_mask, 1, eos, fast=True))
    decode = timed(lambda: greedy_decode(wb.model, short.input_ids, short.attention_mask, steps, [-1], fast=True))
    first = timed(lambda: greedy_decode(wb.model, short.input_ids, short.attention_mask, 1, [-1], fast=True))
    per_token, per_step = prefill / one.input_ids.shape[1], (decode - first) / (steps - 1)
    print(f"  prefill {1000 * per_token:.2f} ms/token (batch 1, {one.input_ids.shape[1]} tokens); a decode step at batch 1 "
          f"{1000 * per_step:.1f} ms = {per_step / per_token:.1f} prefill tokens (workbench.batching.STEP_TOKENS "
          f"= {STEP_TOKENS})")
    if any(differ.values()):
        raise SystemExit(f"planned batches changed answers: {differ}")


if __name__ == "__main__":
    main()
