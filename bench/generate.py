"""Benchmark: greedy generation -- Workbench (``greedy_decode``: shared prefix once, finished rows
leave the batch), HF ``generate`` batched (left padding, the previous Workbench path) and HF
``generate`` at batch 1 (the baseline) -- on the same real prompts in the same run. Prints tokens/s,
the ratios, and checks that Workbench's tokens equal HF batch 1's on every prompt (fp32).
``--bf16`` (default: where bf16 GEMMs are fast, AMX) also times Workbench on a bf16 copy of the
model and reports how many answers are identical to fp32's and where they first differ. Where bf16
GEMMs are fast, Workbench is also timed with its unembedding argmax in plain fp32
(``generation.SCREEN_UNEMBEDDING = False``), the previous path, asserting the same tokens.

Rounds are interleaved; the median over rounds is reported. HF batch 1 runs on the first
``--n-single`` prompts only (it is slow); the others on all ``--n``.

    python bench/generate.py [--n 64] [--n-single 8] [--batch-size 32] [--max-new-tokens 48] [--rounds 3] [--bf16 on]
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
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--n-single", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                    help="also time a bf16 copy of the model (auto: where bf16 GEMMs are fast, AMX)")
    args = ap.parse_args()

    from workbench import Workbench, generation
    from workbench._hardware import fast_bf16
    from workbench.data import harmful_vs_benign
    from workbench.generation import eos_token_ids

    wb = Workbench.load()
    prompts = [r.prompt for r in harmful_vs_benign(n_per_class=args.n // 2, match_lengths=True, seed=0)][: args.n]
    tok = wb.tokenizer
    eos = eos_token_ids(wb.model, tok)

    def cut(ids: list[int]) -> list[int]:  # new tokens up to and including the first end token
        for j, t in enumerate(ids):
            if t in eos:
                return ids[: j + 1]
        return ids

    def hf(ps: list[str], batch_size: int) -> list[list[int]]:
        out = []
        with torch.no_grad():
            for lo in range(0, len(ps), batch_size):
                b = wb.tokenize(ps[lo:lo + batch_size])  # left-padded
                ids = wb.model.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, do_sample=False,
                                        max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id)
                out += [cut(row) for row in ids[:, b.input_ids.shape[1]:].tolist()]
        return out

    bf16 = fast_bf16() if args.bf16 == "auto" else args.bf16 == "on"
    wb16 = Workbench.load(dtype=torch.bfloat16) if bf16 else None

    def workbench(ps: list[str], w=wb) -> list[str]:
        return w.generate(ps, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False)

    single_ids = hf(prompts[: args.n_single], 1)
    want = tok.batch_decode(single_ids, skip_special_tokens=True)
    rates: dict[str, list[float]] = {"hf_b1": [], "hf_batched": [], "workbench": [], "workbench_bf16": [],
                                     "workbench_fp32_head": []}
    screen = fast_bf16()  # ScreenedArgmax applies (AMX): also time the plain fp32 unembedding
    head_diff = 0
    texts16: list[str] = []
    mismatches = 0
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        ids = hf(prompts[: args.n_single], 1)
        rates["hf_b1"].append(sum(map(len, ids)) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        ids = hf(prompts, args.batch_size)
        rates["hf_batched"].append(sum(map(len, ids)) / (time.perf_counter() - t0))
        hf_texts = tok.batch_decode(ids, skip_special_tokens=True)
        t0 = time.perf_counter()
        texts = workbench(prompts)
        # token count: HF batched's (the same answers: checked below, up to float-order ties)
        rates["workbench"].append(sum(map(len, ids)) / (time.perf_counter() - t0))
        mismatches = sum(a != b for a, b in zip(texts[: args.n_single], want))
        batched_diff = sum(a != b for a, b in zip(texts, hf_texts))
        if screen:
            generation.SCREEN_UNEMBEDDING = False
            t0 = time.perf_counter()
            plain = workbench(prompts)
            rates["workbench_fp32_head"].append(sum(map(len, ids)) / (time.perf_counter() - t0))
            generation.SCREEN_UNEMBEDDING = True
            head_diff = sum(a != b for a, b in zip(plain, texts))
        if wb16 is not None:
            t0 = time.perf_counter()
            texts16 = workbench(prompts, wb16)
            rates["workbench_bf16"].append(sum(len(tok(t, add_special_tokens=False).input_ids) for t in texts16)
                                           / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items() if v}
    print(f"{len(prompts)} prompts (HF batch 1: the first {args.n_single}), up to {args.max_new_tokens} new tokens, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, median of {args.rounds} rounds")
    print(f"  HF generate, batch 1              {med['hf_b1']:7.1f} tok/s")
    print(f"  HF generate, batch {args.batch_size:<3d} (left pad)  {med['hf_batched']:7.1f} tok/s  "
          f"{med['hf_batched'] / med['hf_b1']:6.2f}x")
    print(f"  Workbench greedy_decode, batch {args.batch_size:<3d} {med['workbench']:7.1f} tok/s  "
          f"{med['workbench'] / med['hf_b1']:6.2f}x  ({med['workbench'] / med['hf_batched']:.2f}x HF batched)")
    print(f"  tokens identical to HF batch 1: {args.n_single - mismatches}/{args.n_single} prompts; "
          f"to HF batched: {len(prompts) - batched_diff}/{len(prompts)}")
    if screen:
        print(f"  Workbench, fp32 unembedding argmax {med['workbench_fp32_head']:7.1f} tok/s  "
              f"{med['workbench_fp32_head'] / med['hf_b1']:6.2f}x  (the bf16-screened argmax: "
              f"{med['workbench'] / med['workbench_fp32_head']:.2f}x it; answers identical on "
              f"{len(prompts) - head_diff}/{len(prompts)})")
    if wb16 is not None:
        words = [(a.split(), b.split()) for a, b in zip(texts, texts16)]
        first = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                 for a, b in words if a != b]
        print(f"  Workbench bf16 weights, batch {args.batch_size:<3d}  {med['workbench_bf16']:7.1f} tok/s  "
              f"{med['workbench_bf16'] / med['hf_b1']:6.2f}x  ({med['workbench_bf16'] / med['workbench']:.2f}x fp32 "
              f"Workbench; its own tokens, re-tokenized)")
        from workbench.evals import default_judge

        judge = default_judge()
        same_verdict = int((judge(prompts, texts) == judge(prompts, texts16)).sum())
        print(f"  bf16 answers identical to fp32: {sum(a == b for a, b in zip(texts, texts16))}/{len(prompts)}; "
              f"the others first differ at word {statistics.median(first) if first else '-'} (median); "
              f"the refusal judge's verdict is the same on {same_verdict}/{len(prompts)}")
    if mismatches or head_diff:
        raise SystemExit(f"{mismatches} prompts differ from HF batch 1, {head_diff} between the two unembeddings")


if __name__ == "__main__":
    main()
