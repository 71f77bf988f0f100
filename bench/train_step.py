"""Benchmark: one training step on the default model -- LoRA alone, LoRA + CAFT ablation at 3 layers,
LoFIT phase v (head biases only) -- plus trainable-parameter counts.

All steps run on the same chat-formatted SFT batch (batch 4, right-padded, loss on response tokens)
with the same code the trainer uses (peft LoRA on the bridged model, ``Ablate`` / ``HeadBias``
installed with ``wb.hooks``). A step is forward + backward + AdamW step + zero_grad. The
configurations run in interleaved rounds (order rotated every round) and the median per
configuration is reported as a ratio to LoRA measured in the same run.

Goal: LoRA + CAFT <= 1.05x LoRA.

    python bench/train_step.py [--repeats 7] [--layers 10,15,20] [--k 20] [--heads 16] [--cutoff 128]
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
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--layers", default="10,15,20", help="CAFT layers (blocks.{l}.hook_resid_post)")
    ap.add_argument("--k", type=int, default=20, help="directions ablated per layer")
    ap.add_argument("--heads", type=int, default=16, help="LoFIT heads (random, seeded)")
    ap.add_argument("--cutoff", type=int, default=128)
    ap.add_argument("--lora-target", default="all")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from workbench import Workbench
    from workbench.data import load_dataset
    from workbench.interventions import Ablate, HeadBias
    from workbench.train import coca
    from workbench.train.data import Collator, encode
    from workbench.train.methods import count_parameters, freeze, inject_lora
    from workbench.train.recipe import LORA_MODULES

    torch.manual_seed(0)
    wb_lora = Workbench.load()
    wb_lofit = Workbench.load()  # a second, untouched copy: LoFIT trains no model weight
    harmful = encode(wb_lora, coca.plain_sft(load_dataset("harmbench", split="train", limit=8)), args.cutoff)
    benign = encode(wb_lora, coca.plain_sft(load_dataset("benign_instructions", split="train", limit=8)), args.cutoff)
    batch = Collator(wb_lora.tokenizer.pad_token_id)(harmful[:2] + benign[:2])  # batch 4
    n_tokens = int(batch["attention_mask"].sum())

    targets = list(LORA_MODULES) if args.lora_target == "all" else args.lora_target.split(",")
    lora = inject_lora(wb_lora.model, targets, rank=8, alpha=16)
    layers = [int(x) for x in args.layers.split(",")]
    ablate = Ablate({f"blocks.{l}.hook_resid_post": torch.randn(args.k, wb_lora.d_model) for l in layers})
    freeze(wb_lofit.model)
    gen = torch.Generator().manual_seed(0)
    all_heads = [(l, h) for l in range(wb_lofit.n_layers) for h in range(wb_lofit.n_heads)]
    pick = torch.randperm(len(all_heads), generator=gen)[: args.heads].tolist()
    bias = HeadBias.for_model(wb_lofit, heads=sorted(all_heads[i] for i in pick))

    def optimizer(params):
        return torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-4)

    lora_opt = optimizer(lora.parameters())  # CAFT trains the same LoRA
    configs = {
        "lora": (wb_lora, lora, None, lora_opt),
        f"lora+caft({len(layers)} layers, k={args.k})": (wb_lora, lora, ablate, lora_opt),
        f"lofit_v({args.heads} heads)": (wb_lofit, wb_lofit.model, bias, optimizer(bias.parameters())),
    }
    names = list(configs)

    def step(name: str) -> float:
        wb, model, hooks, opt = configs[name]
        model.train()
        t0 = time.perf_counter()
        with wb.hooks(hooks) if hooks is not None else _null():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        labels=batch["labels"], use_cache=False)
            out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for name in names:  # warm-up
        step(name)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            times[name].append(step(name))

    med = {n: statistics.median(t) for n, t in times.items()}
    base = med["lora"]
    lora_trainable = count_parameters(lora)[0]
    lofit_v = bias.n_trainable()
    lofit_a = wb_lofit.n_layers * wb_lofit.n_heads * wb_lofit.d_head
    print(f"\none training step, default model ({wb_lora.model_id}), batch {batch['input_ids'].shape[0]} x "
          f"{batch['input_ids'].shape[1]} positions ({n_tokens} real tokens), {args.threads} threads, "
          f"median of {args.repeats} interleaved repeats")
    mins = {n: min(t) for n, t in times.items()}
    # per-round ratios: each round runs every configuration back to back, so a ratio within a
    # round is less exposed to slow drifts in machine load than a ratio of medians
    paired = {n: statistics.median(a / b for a, b in zip(times[n], times["lora"])) for n in names}
    print(f"{'configuration':<34}{'median s':>10}{'min s':>8}{'median ratio':>14}{'min ratio':>11}"
          f"{'paired ratio':>14}")
    for n in names:
        print(f"{n:<34}{med[n]:>10.3f}{mins[n]:>8.3f}{med[n] / base:>13.3f}x{mins[n] / mins['lora']:>10.3f}x"
              f"{paired[n]:>13.3f}x")
    caft_ratio = med[names[1]] / base
    print(f"CAFT goal <= 1.05x (median ratio): {'met' if caft_ratio <= 1.05 else 'NOT met'} ({caft_ratio:.3f}x; "
          f"min ratio {mins[names[1]] / mins['lora']:.3f}x, median of paired ratios {paired[names[1]]:.3f}x)")
    print("\ntrainable parameters")
    print(f"  LoRA rank 8 on {','.join(targets)}: {lora_trainable:>10,}")
    print(f"  LoFIT phase v ({args.heads} heads x d_head {wb_lofit.d_head}): {lofit_v:>10,}  "
          f"({lora_trainable / lofit_v:,.0f}x fewer than LoRA)")
    print(f"  LoFIT phase A (all {wb_lofit.n_layers * wb_lofit.n_heads} heads): {lofit_a:>10,}  "
          f"({lora_trainable / lofit_a:,.0f}x fewer than LoRA)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"median_s": med, "min_s": mins, "paired_ratio": paired, "times_s": times,
                       "ratios": {n: med[n] / base for n in names},
                       "trainable": {"lora": lora_trainable, "lofit_v": lofit_v, "lofit_A": lofit_a},
                       "batch_shape": list(batch["input_ids"].shape), "tokens": n_tokens}, f, indent=2)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
