"""Benchmark: does length-grouped batching (``group_by_length: true``), bf16 autocast
(``bf16: true``, ``--compare bf16``), padding-free packing (``packing: true``, ``--compare packed``)
or both (``--compare packed_bf16``) train to the same loss as random fp32 batches? The speed
side is ``bench/train_step.py``; this is the quality side.

The same LoRA (r8 on attention + MLP, one seeded initialisation restored before each run) is
trained for ``--epochs`` passes over the same safety SFT examples (half HarmBench -> refusal, half
benign instructions -> reference answer), once in random batch order and once in HF's
length-grouped order (a fresh seeded permutation per epoch for both), same optimizer and learning
rate; with ``--compare bf16`` the second run keeps the random order and trains under bf16
autocast instead (``packed``: packed batches, ``packed_bf16``: both). Each run is scored (in fp32)
on every example with the weights frozen (mean next-token loss over the labelled tokens, the same
number whatever the batch order), after every epoch: the loss curves and the final loss ratio
(goal: within 2%) are printed, with each run's real tokens per second.

    python bench/train_loss.py [--n 64] [--batch 4] [--epochs 3] [--seeds 0,1] [--compare grouped|bf16|packed|packed_bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="examples (half harmful, half benign)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seeds", default="0,1", help="comma-separated batch-order seeds, one pair of runs each")
    ap.add_argument("--mega-batches", type=int, default=6, help="batches sorted together (see bench/train_step.py)")
    ap.add_argument("--cutoff", type=int, default=128)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--compare", choices=("grouped", "bf16", "packed", "packed_bf16"), default="grouped",
                    help="what is compared with random fp32 batches: length-grouped order, bf16 autocast, "
                         "padding-free packing, or packing with bf16")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    other = args.compare
    torch.set_num_threads(args.threads)

    from transformers.trainer_pt_utils import get_length_grouped_indices

    from workbench import Workbench
    from workbench._allocator import keep_freed_memory
    from workbench.data import load_dataset
    from workbench.train import coca
    from workbench.train.data import IGNORE_INDEX, Collator, encode
    from workbench.train.loss import response_loss
    from workbench.train.methods import inject_lora
    from workbench.train.recipe import LORA_MODULES

    keep_freed_memory()
    torch.manual_seed(0)
    wb = Workbench.load()
    half = args.n // 2
    examples = (encode(wb, coca.plain_sft(load_dataset("harmbench", split="train", limit=half)), args.cutoff)
                + encode(wb, coca.plain_sft(load_dataset("benign_instructions", split="train", limit=half)),
                         args.cutoff))
    collate = Collator(wb.tokenizer.pad_token_id)
    lengths = [len(e["input_ids"]) for e in examples]
    real = sum(lengths)
    model = inject_lora(wb.model, list(LORA_MODULES), rank=8, alpha=16)
    init = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    score_batches = [collate(examples[lo:lo + 8]) for lo in range(0, len(examples), 8)]

    def order(kind: str, seed: int, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(1000 * seed + epoch)
        if kind != "grouped":
            return torch.randperm(len(examples), generator=gen).tolist()
        return get_length_grouped_indices(lengths, args.batch, mega_batch_mult=args.mega_batches, generator=gen)

    @torch.no_grad()
    def score() -> float:
        model.eval()
        total, count = 0.0, 0
        for b in score_batches:  # summed over the batch's labelled tokens (num_items=1), then one mean
            total += float(response_loss(model, b["input_ids"], b["attention_mask"], b["labels"], num_items=1))
            count += int((b["labels"][:, 1:] != IGNORE_INDEX).sum())
        return total / count

    def run(kind: str, seed: int) -> dict:
        with torch.no_grad():
            for k, v in model.named_parameters():
                if k in init:
                    v.copy_(init[k])
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
        curve, padded, seconds = [score()], 0, 0.0
        for epoch in range(args.epochs):
            idx = order(kind, seed, epoch)
            model.train()
            t0 = time.perf_counter()
            for lo in range(0, len(idx), args.batch):
                b = collate([examples[i] for i in idx[lo:lo + args.batch]])
                padded += int(b["attention_mask"].sum()) if kind.startswith("packed") else b["input_ids"].numel()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind.endswith("bf16")):
                    loss = response_loss(model, b["input_ids"], b["attention_mask"], b["labels"],
                                         pack=kind.startswith("packed"))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            seconds += time.perf_counter() - t0
            curve.append(score())
        return {"curve": curve, "tokens_per_s": real * args.epochs / seconds, "padded": padded}

    seeds = [int(s) for s in args.seeds.split(",")]
    results = {f"{kind}, seed {s}": run(kind, s) for s in seeds for kind in ("random", other)}
    print(f"\nLoRA r8, default model ({wb.model_id}): {len(examples)} safety SFT examples ({real} real tokens), "
          f"batches of {args.batch}, {args.epochs} epochs, lr {args.lr}; {args.threads} threads")
    print(f"{'run':<20}{'loss on every example after each epoch (0 = before)':<58}{'tokens/s':>10}{'padded':>9}")
    for name, r in results.items():
        print(f"{name:<20}{' '.join(f'{x:.4f}' for x in r['curve']):<58}{r['tokens_per_s']:>10.1f}{r['padded']:>9}")
    ratios = [results[f"{other}, seed {s}"]["curve"][-1] / results[f"random, seed {s}"]["curve"][-1] for s in seeds]
    speed = [results[f"{other}, seed {s}"]["tokens_per_s"] / results[f"random, seed {s}"]["tokens_per_s"]
             for s in seeds]
    print(f"final loss, {other} / random: {', '.join(f'{r:.4f}' for r in ratios)} (goal: within 2%: "
          f"{'met' if all(abs(r - 1) <= 0.02 for r in ratios) else 'NOT met'}); tokens/s {other} / random: "
          f"median {statistics.median(speed):.2f}x")
    if len(seeds) > 1:  # the noise floor: two random orders against each other
        floor = results[f"random, seed {seeds[1]}"]["curve"][-1] / results[f"random, seed {seeds[0]}"]["curve"][-1]
        print(f"final loss, random seed {seeds[1]} / random seed {seeds[0]}: {floor:.4f} (the spread batch order "
              f"alone gives)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "final_loss_ratio": ratios, "speed_ratio": speed}, f, indent=2)


if __name__ == "__main__":
    main()
