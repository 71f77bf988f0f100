"""GPU check: capture, one training step and generation on a CUDA device, each as a ratio to its
plain Hugging Face baseline measured in the same run (fp32 and bf16).

    bash bench/gpu_check.sh          # = python bench/gpu_check.py; exits 0 with a note without a GPU

Capture: ``wb.capture`` of 12 resid_post sites vs a plain HF forward with ``output_hidden_states``.
Training: one full fine-tuning step through ``response_loss`` (the trainer's loss) vs HF's own loss.
Generation: ``wb.generate`` at batch 32 vs HF ``generate`` at batch 1 (greedy, 32 new tokens).
Each timing is the median of 5 rounds after a warm-up, with ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


ROUNDS = 5
DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, rounds: int | None = None) -> float:
    fn()
    sync()
    out = []
    for _ in range(rounds or ROUNDS):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> int:
    global ROUNDS, DEVICE
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run of the script")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per measurement (median)")
    args = ap.parse_args()
    ROUNDS, DEVICE = args.rounds, args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing measured")
        return 0
    from workbench.data import harmful_vs_benign

    prompts = [r.prompt for r in harmful_vs_benign(n_per_class=16, match_lengths=True, seed=0)]
    print(f"device: {torch.cuda.get_device_name() if DEVICE == 'cuda' else DEVICE}")
    for dtype in (torch.float32, torch.bfloat16) if DEVICE == "cuda" else (torch.float32,):
        check(dtype, prompts)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return 0


def check(dtype: torch.dtype, prompts: list[str]) -> None:
    from workbench import Workbench
    from workbench.data import harmful_vs_benign
    from workbench.train.coca import plain_sft
    from workbench.train.data import Collator, encode
    from workbench.train.loss import response_loss

    wb = Workbench.load(device=DEVICE, dtype=dtype)
    sites = [f"blocks.{l}.hook_resid_post" for l in range(0, wb.n_layers, 3)]
    batch = wb.tokenize(prompts).to(DEVICE)

    def hf_forward():
        with torch.no_grad():
            wb.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)

    t_hf = timed(hf_forward)
    t_cap = timed(lambda: wb.capture(prompts, sites, position="last", batch_size=len(prompts), progress=False))
    recs = plain_sft(harmful_vs_benign(n_per_class=4, seed=1))
    train = Collator(wb.tokenizer.pad_token_id)(encode(wb, recs, 128))
    train = {k: v.to(DEVICE) for k, v in train.items()}
    for p in wb.model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(wb.model.parameters(), lr=1e-6)

    def step(loss_fn):
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad()

    t_step_hf = timed(lambda: step(lambda: wb.model(**train).loss))
    t_step = timed(lambda: step(lambda: response_loss(wb.model, train["input_ids"], train["attention_mask"], train["labels"])))
    for p in wb.model.parameters():
        p.requires_grad_(False)

    def hf_generate():
        for p in prompts[:8]:
            b = wb.tokenize([p]).to(DEVICE)
            wb.model.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, do_sample=False,
                              max_new_tokens=32, pad_token_id=wb.tokenizer.pad_token_id)

    t_gen1 = timed(hf_generate, rounds=min(3, ROUNDS)) / 8
    t_gen = timed(lambda: wb.generate(prompts, max_new_tokens=32, batch_size=32, progress=False), rounds=min(3, ROUNDS)) / len(prompts)
    name = str(dtype).split(".")[-1]
    print(f"{name:9s} capture {t_cap * 1e3:7.1f} ms vs HF forward {t_hf * 1e3:7.1f} ms -> {t_cap / t_hf:5.2f}x time")
    print(f"{name:9s} train step {t_step * 1e3:7.1f} ms vs HF loss {t_step_hf * 1e3:7.1f} ms -> {t_step_hf / t_step:5.2f}x speed")
    print(f"{name:9s} generate {t_gen * 1e3:7.1f} ms/prompt (batch 32) vs HF batch 1 {t_gen1 * 1e3:7.1f} ms/prompt "
          f"-> {t_gen1 / t_gen:5.1f}x speed")


if __name__ == "__main__":
    sys.exit(main())
