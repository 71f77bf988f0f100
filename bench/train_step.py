"""Benchmark: real training tokens per second on the default model, the previous training path
against today's, on the same safety SFT examples (harmful -> refusal, benign -> reference answer).

* ``lora, HF loss, random batches`` -- the previous path: ``model(..., labels=...)`` (logits at every
  position, the batch's system-turn prefix run once per row), batches in random order (padding to
  each batch's longest example);
* ``lora, workbench loss, random batches`` -- :func:`workbench.train.loss.response_loss` (shared
  prefix once, logits only where a label is), same batches;
* ``lora, workbench loss, length-grouped`` -- the same with HF's length-grouped sampler
  (``group_by_length: true`` in a recipe);
* every configuration but the previous path runs with :func:`workbench._allocator.keep_freed_memory`'s
  settings (freed memory stays in the heap); the previous path with glibc's defaults;
* ``+caft`` / ``lofit_v`` -- CAFT's ablation at ``--layers`` on top of the last one, LoFIT phase v;
* ``bf16 autocast`` -- today's path (workbench loss, random batches: what the recipes run) under
  ``torch.autocast("cpu", torch.bfloat16)`` (recipe key ``bf16: true``), LoRA and CAFT; weights and
  optimizer stay fp32. Ratios are given against the previous path and against today's fp32 path;
* ``packed`` -- today's path with each batch run as one row of its real tokens
  (:func:`workbench._forward.packed_hidden_states`, recipe key ``packing: true``): no padded position
  is computed, the same batches and the same loss; alone and with bf16 autocast, LoRA and CAFT.

A pass = one optimizer step (forward + backward + AdamW + zero_grad) per batch of ``--batch``
over ``--n`` examples. Passes are interleaved over ``--rounds`` rounds (order rotated); the median
tokens/s per configuration is reported with its ratio to the previous path. The two losses of the
same batch are compared too (they are the same number up to float rounding).

    python bench/train_step.py [--n 48] [--batch 4] [--mega-batches 6] [--rounds 3] [--layers 10,15,20] [--k 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["WORKBENCH_MALLOC"] = "default"  # switched per configuration below


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=48, help="examples per pass (half harmful, half benign)")
    ap.add_argument("--mega-batches", type=int, default=6, help="batches sorted together by the length-grouped sampler")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", default="10,15,20", help="CAFT layers (blocks.{l}.hook_resid_post)")
    ap.add_argument("--k", type=int, default=20, help="directions ablated per layer")
    ap.add_argument("--heads", type=int, default=16, help="LoFIT heads (random, seeded)")
    ap.add_argument("--cutoff", type=int, default=128)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers.trainer_pt_utils import get_length_grouped_indices

    from workbench import Workbench
    from workbench._allocator import switch
    from workbench.data import load_dataset
    from workbench.interventions import Ablate, HeadBias
    from workbench.train import coca
    from workbench.train.data import Collator, encode
    from workbench.train.loss import response_loss
    from workbench.train.methods import count_parameters, freeze, inject_lora
    from workbench.train.recipe import LORA_MODULES

    torch.manual_seed(0)
    wb_lora = Workbench.load()
    wb_lofit = Workbench.load()  # a second, untouched copy: LoFIT trains no model weight
    half = args.n // 2
    examples = (encode(wb_lora, coca.plain_sft(load_dataset("harmbench", split="train", limit=half)), args.cutoff)
                + encode(wb_lora, coca.plain_sft(load_dataset("benign_instructions", split="train", limit=half)),
                         args.cutoff))
    collate = Collator(wb_lora.tokenizer.pad_token_id)
    lengths = [len(e["input_ids"]) for e in examples]
    gen = torch.Generator().manual_seed(0)
    random_order = torch.randperm(len(examples), generator=gen).tolist()
    # HF's sampler sorts within mega-batches of min(n // (4 * batch), 50) batches: 25 for 400 examples
    # in batches of 4; --mega-batches gives this sample the same share of sorting
    grouped_order = get_length_grouped_indices(lengths, args.batch, mega_batch_mult=args.mega_batches,
                                               generator=torch.Generator().manual_seed(0))

    def batches(order):
        return [collate([examples[i] for i in order[lo:lo + args.batch]]) for lo in range(0, len(order), args.batch)]

    plans = {"random": batches(random_order), "grouped": batches(grouped_order)}
    real = sum(lengths)
    padded = {k: sum(b["input_ids"].numel() for b in v) for k, v in plans.items()}

    lora = inject_lora(wb_lora.model, list(LORA_MODULES), rank=8, alpha=16)
    layers = [int(x) for x in args.layers.split(",")]
    ablate = Ablate({f"blocks.{l}.hook_resid_post": torch.randn(args.k, wb_lora.d_model) for l in layers})
    freeze(wb_lofit.model)
    all_heads = [(l, h) for l in range(wb_lofit.n_layers) for h in range(wb_lofit.n_heads)]
    pick = torch.randperm(len(all_heads), generator=gen)[: args.heads].tolist()
    bias = HeadBias.for_model(wb_lofit, heads=sorted(all_heads[i] for i in pick))

    def optimizer(params):
        return torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-4)

    def hf_loss(model, b):
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
                     use_cache=False).loss

    def wb_loss(model, b):
        return response_loss(model, b["input_ids"], b["attention_mask"], b["labels"])

    def packed_loss(model, b):
        return response_loss(model, b["input_ids"], b["attention_mask"], b["labels"], pack=True)

    lora_opt = optimizer(lora.parameters())
    caft = f"lora+caft({len(layers)} layers, k={args.k}), workbench loss, length-grouped"
    today = "lora, workbench loss, random batches"
    caft_today = f"lora+caft({len(layers)} layers, k={args.k}), workbench loss, random batches"
    packed = "lora, workbench loss, random batches, packed"
    caft_packed = f"lora+caft({len(layers)} layers, k={args.k}), workbench loss, random batches, packed"
    configs = {  # name: (wb, model, hooks, optimizer, loss, batches, bf16 autocast)
        "lora, HF loss, random batches (previous)": (wb_lora, lora, None, lora_opt, hf_loss, "random", False),
        today: (wb_lora, lora, None, lora_opt, wb_loss, "random", False),
        "lora, workbench loss, length-grouped": (wb_lora, lora, None, lora_opt, wb_loss, "grouped", False),
        caft: (wb_lora, lora, ablate, lora_opt, wb_loss, "grouped", False),
        f"lofit_v({args.heads} heads), workbench loss, length-grouped":
            (wb_lofit, wb_lofit.model, bias, optimizer(bias.parameters()), wb_loss, "grouped", False),
        caft_today: (wb_lora, lora, ablate, lora_opt, wb_loss, "random", False),
        f"{today}, bf16 autocast": (wb_lora, lora, None, lora_opt, wb_loss, "random", True),
        f"{caft_today}, bf16 autocast": (wb_lora, lora, ablate, lora_opt, wb_loss, "random", True),
        packed: (wb_lora, lora, None, lora_opt, packed_loss, "random", False),
        caft_packed: (wb_lora, lora, ablate, lora_opt, packed_loss, "random", False),
        f"{packed}, bf16 autocast": (wb_lora, lora, None, lora_opt, packed_loss, "random", True),
        f"{caft_packed}, bf16 autocast": (wb_lora, lora, ablate, lora_opt, packed_loss, "random", True),
    }
    names = list(configs)
    base_name = names[0]

    def one_pass(name: str) -> float:
        wb, model, hooks, opt, loss_fn, plan, bf16 = configs[name]
        switch(name != base_name)  # the previous path ran on glibc's allocator defaults
        model.train()
        t0 = time.perf_counter()
        with wb.hooks(hooks) if hooks is not None else _null():
            for b in plans[plan]:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = loss_fn(model, b)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        return real / (time.perf_counter() - t0)

    # the two losses of one batch, before any step
    with torch.no_grad():
        b0 = plans["random"][0]
        gap = abs(float(hf_loss(lora, b0)) - float(wb_loss(lora, b0)))
        packed_gap = abs(float(packed_loss(lora, b0)) - float(wb_loss(lora, b0)))
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            rates[name].append(one_pass(name))
    med = {n: statistics.median(v) for n, v in rates.items()}
    print(f"\ntraining, default model ({wb_lora.model_id}): {len(examples)} safety SFT examples in batches of "
          f"{args.batch}, {real} real tokens; padded positions: random order {padded['random']}, length-grouped "
          f"{padded['grouped']}; {args.threads} threads; median of {args.rounds} interleaved rounds")
    print(f"{'configuration':<82}{'real tokens/s':>14}{'vs previous':>12}{'vs today':>10}")
    for n in names:
        print(f"{n:<82}{med[n]:>14.1f}{med[n] / med[base_name]:>11.2f}x{med[n] / med[today]:>9.2f}x")
    for lora_name, caft_name in ((names[2], caft), (today, caft_today),
                                 (f"{today}, bf16 autocast", f"{caft_today}, bf16 autocast"),
                                 (packed, caft_packed), (f"{packed}, bf16 autocast", f"{caft_packed}, bf16 autocast")):
        caft_ratio = med[lora_name] / med[caft_name]
        print(f"CAFT goal <= 1.05x LoRA (time per token, same batches; {caft_name}): "
              f"{'met' if caft_ratio <= 1.05 else 'NOT met'} ({caft_ratio:.3f}x)")
    bf16_gain = [med[f"{n}, bf16 autocast"] / med[n] for n in (today, caft_today)]
    print(f"bf16 autocast vs today's fp32 path: LoRA {bf16_gain[0]:.2f}x, CAFT {bf16_gain[1]:.2f}x (goal >= 1.5x)")
    for suffix in ("", ", bf16 autocast"):
        gain = [med[f"{p}{suffix}"] / med[n] for p, n in ((packed, today), (caft_packed, caft_today))]
        print(f"packed{suffix} vs today's fp32 path: LoRA {gain[0]:.2f}x, CAFT {gain[1]:.2f}x (goal >= 1.5x: "
              f"{'met' if min(gain) >= 1.5 else 'NOT met'})")
    print(f"|HF loss - workbench loss| on one batch: {gap:.2e}; |workbench loss - packed loss|: {packed_gap:.2e}")
    print(f"trainable parameters: LoRA r8 {count_parameters(lora)[0]:,}; LoFIT phase v {bias.n_trainable():,}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tokens_per_s": rates, "median": med, "loss_gap": gap, "packed_loss_gap": packed_gap,
                       "padded": padded, "real": real}, f, indent=2)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
