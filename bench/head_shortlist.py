"""Benchmark of two *exact* bf16 screens for the unembedding of greedy decoding.

* ``shortlist`` (tried and not kept): bf16 logits plus a bf16 bound on their rounding error
  (sum_i |h_i||w_ji| times 3u + 2^-12, u = 2^-8: a second GEMM) give an upper bound per token;
  the top ``k`` by that bound are re-scored in fp32, and the fp32 argmax is certified when the
  best re-scored logit beats the k-th bound.
* :class:`workbench.generation.ScreenedArgmax` (kept): one bf16 GEMM, a Cauchy-Schwarz bound
  (no second GEMM), candidates found through block maxima (no top-k), every candidate re-scored.

Prints (1) on the default model's real prompt positions, the share certified and the share whose
shortlist argmax equals the fp32 argmax, per ``k``, and whether ScreenedArgmax's equals it; (2) the
time of the fp32 head against both at batch 64, 128 and 256 (median of ``--rounds`` x 20 calls,
interleaved).

    python bench/head_shortlist.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import cast

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
U = 2.0 ** -8
COEF = (3 * U + 2.0 ** -12) * (1 + 4 * U)  # input and output rounding, fp32 accumulation; the bound's own bf16 error


def shortlist(h: torch.Tensor, w: torch.Tensor, wb: torch.Tensor, wab: torch.Tensor, k: int):
    """``(argmax [B], certified [B])`` for hidden states ``h`` ``[B, d]`` and head ``w`` ``[V, d]``."""
    approx = (h.bfloat16() @ wb.T).float()
    bound = (h.abs().bfloat16() @ wab.T).float()
    upper = torch.addcmul(approx, bound, torch.tensor(COEF))
    top = upper.topk(k, -1)
    exact = torch.bmm(w[top.indices], h[:, :, None]).squeeze(-1)
    best = exact.max(1)
    return top.indices.gather(1, best.indices[:, None]).squeeze(1), best.values > top.values[:, -1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from workbench import Workbench
    from workbench._forward import decoder_and_head
    from workbench.data import harmful_vs_benign
    from workbench.generation import ScreenedArgmax, _unwrapped

    wb = Workbench.load()
    _, head = decoder_and_head(wb.model)
    w = cast(torch.Tensor, _unwrapped(head).weight).detach()  # the tied unembedding [V, d]
    screened = ScreenedArgmax(_unwrapped(head))  # the bridge's zero bias included: it is dropped as zero
    wb16, wab16 = w.bfloat16(), w.abs().bfloat16()
    b = wb.tokenize([r.prompt for r in harmful_vs_benign(n_per_class=32, match_lengths=True, seed=0)])
    with torch.no_grad():
        out = wb.model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True)
        h = out.hidden_states[-1][b.attention_mask.bool()]
        ref = out.logits[b.attention_mask.bool()].argmax(-1)
        print(f"{len(h)} prompt positions of 64 prompts")
        for k in (4, 8, 16, 32):
            arg, ok = shortlist(h, w, wb16, wab16, k)
            print(f"k={k}: certified {ok.float().mean():.4f}, argmax equals fp32 {(arg == ref).float().mean():.4f}")
        print(f"ScreenedArgmax: argmax equals fp32 on {int((screened(h) == ref).sum())}/{len(h)} positions")
        for batch in (64, 128, 256):
            x = h[:batch]
            times: dict[str, list[float]] = {"fp32 head": [], "bf16 shortlist (k=16)": [], "ScreenedArgmax": []}
            for _ in range(args.rounds):
                for name, fn in (("fp32 head", lambda: (x @ w.T).argmax(-1)),
                                 ("bf16 shortlist (k=16)", lambda: shortlist(x, w, wb16, wab16, 16)),
                                 ("ScreenedArgmax", lambda: screened(x))):
                    fn()
                    t = time.perf_counter()
                    for _ in range(20):
                        fn()
                    times[name].append((time.perf_counter() - t) / 20 * 1000)
            base = statistics.median(times["fp32 head"])
            for name, ts in times.items():
                print(f"batch {batch}: {name} {statistics.median(ts):.1f} ms ({base / statistics.median(ts):.2f}x fp32)")


if __name__ == "__main__":
    main()
