"""Benchmark: one full fine-tuning step of the default model (the demo's training), with glibc's
default allocator settings against :func:`workbench._allocator.keep_freed_memory`.

The demo's recipe: every weight trained, AdamW (fused), batches of 8 gender-pronoun examples,
:func:`workbench.train.loss.response_loss`. The two settings alternate step by step in one process
(``mallopt`` can be switched back; the default side also calls ``malloc_trim(0)``, so each of its
steps starts from memory handed back to the system, as a process on glibc's defaults does with
blocks above the mmap threshold). The median step time per setting and the ratio are reported.

    python bench/full_step.py [--steps 16] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["WORKBENCH_MALLOC"] = "default"  # this script switches the settings itself


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=16, help="optimizer steps, alternating the two settings")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from workbench import Workbench
    from workbench._allocator import switch
    from workbench.data.tasks import gender_task
    from workbench.train.data import Collator, encode
    from workbench.train.loss import response_loss

    wb = Workbench.load(system_prompt="")
    recs = gender_task("train", n=8 * args.batch, professions="extended", answer_format="pronoun")
    examples = encode(wb, recs, 128)
    collate = Collator(wb.tokenizer.pad_token_id)
    batches = [collate(examples[i:i + args.batch]) for i in range(0, len(examples), args.batch)]
    model = wb.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6, fused=True)

    def step(b) -> float:
        t0 = time.perf_counter()
        response_loss(model, b["input_ids"], b["attention_mask"], b["labels"]).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - t0

    step(batches[0])  # warm-up: optimizer state, first allocations
    times: dict[str, list[float]] = {"glibc defaults": [], "keep_freed_memory": []}
    for i in range(args.steps):
        keep = i % 2 == 1
        switch(keep)
        times["keep_freed_memory" if keep else "glibc defaults"].append(step(batches[i % len(batches)]))
    tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches)
    base = statistics.median(times["glibc defaults"])
    print(f"full fine-tuning step, batch {args.batch} (~{tokens:.0f} real tokens), {args.threads} threads, "
          f"{args.steps // 2} steps each")
    print("| allocator | median step (s) | tokens/s | ratio |\n|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.2f} | {tokens / med:.0f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
