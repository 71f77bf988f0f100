"""Benchmark: batched greedy generation (Workbench, KV cache, left padding) vs HF ``generate`` at
batch 1, on the same real prompts in the same run. Prints tokens/s and the ratio.

    python bench/generate.py [--n 32] [--batch-size 32] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()

    from workbench import Workbench
    from workbench.data import harmful_vs_benign

    wb = Workbench.load()
    prompts = [r.prompt for r in harmful_vs_benign(n_per_class=args.n // 2, match_lengths=True, seed=0)][: args.n]
    tok = wb.tokenizer

    def new_tokens(ids: torch.Tensor, prompt_len: int) -> int:
        new = ids[:, prompt_len:]  # count up to and including the first end-of-turn token
        return int(sum(((row == tok.eos_token_id).cumsum(0) - (row == tok.eos_token_id).int() == 0).sum() for row in new))

    t0 = time.perf_counter()
    single = 0
    with torch.no_grad():
        for p in prompts:
            b = wb.tokenize([p])
            ids = wb.model.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, do_sample=False,
                                    max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id)
            single += new_tokens(ids, b.input_ids.shape[1])
    t_single = time.perf_counter() - t0

    t0 = time.perf_counter()
    outs = wb.generate(prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False)
    t_batched = time.perf_counter() - t0
    batched = sum(len(tok(o, add_special_tokens=False)["input_ids"]) + 1 for o in outs)

    print(f"{len(prompts)} prompts, up to {args.max_new_tokens} new tokens, {torch.get_num_threads()} threads")
    print(f"  HF generate, batch 1            {single / t_single:7.1f} tok/s  ({t_single:.1f}s)")
    print(f"  Workbench generate, batch {args.batch_size:<3d}   {batched / t_batched:7.1f} tok/s  ({t_batched:.1f}s)")
    print(f"  ratio                           {(batched / t_batched) / (single / t_single):7.2f}x")


if __name__ == "__main__":
    main()
