"""Benchmark: batched torch probes vs the per-site sklearn reference, same folds, same run.

    python bench/probe_sweep.py [--n 1000] [--folds 5] [--real]

Sites: 30 residual sites ``blocks.{l}.hook_resid_post`` (d=576) and 270 head sites
``blocks.{l}.attn.hook_z[h]`` (d=64). Default: synthetic data shaped like SmolLM2-135M-Instruct
(a planted concept whose strength varies with layer, a low-rank shared component, and one
massive-activation dimension (507) carrying ~96% of the residual variance). ``--real`` captures
last-token activations of harmful vs benign prompts through the workbench wrapper instead.

Timings on a small shared machine swing widely with other load; ``--torch-threads 1`` makes
torch immune to thread oversubscription, and the sklearn loop runs with 1 BLAS thread (see
``probes.SKLEARN_BLAS_THREADS``; ``--sklearn-default-blas`` also times the library default).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workbench import probes  # noqa: E402
from workbench._allocator import keep_freed_memory  # noqa: E402
from workbench._hardware import fast_bf16  # noqa: E402
from workbench.probes import probe_sweep, split_heads  # noqa: E402

N_LAYERS, D_MODEL, N_HEADS, D_HEAD, MASSIVE_DIM = 30, 576, 9, 64, 507


def synthetic_features(n: int = 1000, seed: int = 0, massive_fraction: float = 0.96):
    """Synthetic activations: dict site -> ``[n, 576]`` resid and ``[n, 64]`` head features, labels ``[n]``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(n, dtype=torch.long)
    y[torch.randperm(n, generator=g)[: n // 2]] = 1
    sign = (2 * y - 1).double()[:, None]
    k = 16
    latent = torch.randn(n, k, generator=g, dtype=torch.float64)  # shared "topic" factors
    feats: dict[str, torch.Tensor] = {}
    for layer in range(N_LAYERS):
        strength = 0.15 + 2.2 / (1 + math.exp(-(layer - 10) / 2.5))  # weak early, strong late
        loadings = 0.35 * torch.randn(k, D_MODEL, generator=g, dtype=torch.float64)
        u = torch.randn(D_MODEL, generator=g, dtype=torch.float64)
        u /= u.norm()
        x = latent @ loadings + torch.randn(n, D_MODEL, generator=g, dtype=torch.float64)
        x += strength * sign * u
        rest = x.var(0).sum() - x[:, MASSIVE_DIM].var()
        sd = math.sqrt(massive_fraction / (1 - massive_fraction) * float(rest))
        x[:, MASSIVE_DIM] = 8 * sd + sd * torch.randn(n, generator=g, dtype=torch.float64)
        feats[f"blocks.{layer}.hook_resid_post"] = x.float()
        z = torch.randn(n, N_HEADS, D_HEAD, generator=g, dtype=torch.float64)
        for h in range(N_HEADS):
            hs = strength * float(torch.rand(1, generator=g)) ** 2  # most heads weak, a few strong
            v = torch.randn(D_HEAD, generator=g, dtype=torch.float64)
            z[:, h] += latent @ (0.3 * torch.randn(k, D_HEAD, generator=g, dtype=torch.float64))
            z[:, h] += 0.6 * hs * sign * v / v.norm()
        feats[f"blocks.{layer}.attn.hook_z"] = z.float()
    return split_heads(feats), y


def real_features(n: int, batch_size: int = 16, max_chars: int = 1500):
    """Last-token activations of harmful vs benign prompts from the real model (needs the wrapper)."""
    try:
        from workbench import Workbench
        from workbench.data import harmful_vs_benign
    except Exception as e:  # the wrapper / data modules are written separately
        sys.exit(f"--real needs workbench.Workbench and workbench.data.harmful_vs_benign: {type(e).__name__}: {e}")
    # the balanced pool, minus very long prompts (the chat template caps the token count), n/2 per class
    pool = [r for r in harmful_vs_benign() if len(r.prompt) <= max_chars]
    records = [r for r in pool if r.label == 1][: n // 2] + [r for r in pool if r.label == 0][: n // 2]
    prompts = [r.prompt for r in records]
    y = torch.tensor([int(r.label) for r in records])
    sites = [f"blocks.{l}.hook_resid_post" for l in range(N_LAYERS)]
    sites += [f"blocks.{l}.attn.hook_z" for l in range(N_LAYERS)]
    wb = Workbench.load("smollm2-135m-instruct")
    t = time.perf_counter()
    acts = wb.capture(prompts, sites=sites, position="last", batch_size=batch_size)
    print(f"captured {len(sites)} sites for {len(prompts)} prompts in {time.perf_counter() - t:.1f}s")
    return split_heads({s: a.float().cpu() for s, a in dict(acts).items()}), y


def timed_sweep(feats, y, args, method: str, blas_threads: int | None = 1, bf16: bool = False):
    probes.SKLEARN_BLAS_THREADS = blas_threads
    probes.BF16_HESSIANS = bf16
    t = time.perf_counter()
    df = probe_sweep(feats, y, n_folds=args.folds, seed=args.seed, method=method, l2=args.l2)
    return df, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="number of examples")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--l2", type=float, default=1.0)
    ap.add_argument("--real", action="store_true", help="use real SmolLM2 activations via the wrapper")
    ap.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--sklearn-default-blas", action="store_true",
                    help="also time sklearn with the BLAS library's default thread count (slow on small machines)")
    ap.add_argument("--by-group", action="store_true", help="also time each feature width separately")
    ap.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                    help="also time the torch sweep with bf16 Hessians (auto: where bf16 GEMMs are fast, AMX)")
    ap.add_argument("--csv", type=Path, help="write both result tables (suffixes _torch/_sklearn)")
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    # both methods run with freed memory kept in the process, as in any Workbench process (and
    # after the first torch sweep anyway): otherwise every large allocation pays its page faults
    print(f"allocator keeps freed memory: {keep_freed_memory()}")
    feats, y = real_features(args.n) if args.real else synthetic_features(args.n, args.seed)
    widths = sorted({x.shape[1] for x in feats.values()})
    print(f"{len(feats)} sites (widths {widths}), N={len(y)}, {args.folds} folds, l2={args.l2}, "
          f"torch threads={torch.get_num_threads()}, cpu cores={os.cpu_count()}")
    md = probes.massive_dimensions({s: x for s, x in feats.items() if s.endswith("hook_resid_post")})
    print(f"resid_post top-variance dim per layer: most often {md['dim'].mode().iloc[0]}, variance share "
          f"median {md['var_fraction'].median():.1%}, max {md['var_fraction'].max():.1%}")

    dfs, times = {}, {}
    bf16 = fast_bf16() if args.bf16 == "auto" else args.bf16 == "on"
    # untimed warm-up (the first call pays thread-pool start and first-touch page faults): 2 sites per width
    warm = {s: feats[s] for d in widths for s in [s for s in feats if feats[s].shape[1] == d][:2]}
    for m, b in (("torch", False), ("torch", bf16), ("sklearn", False)):
        timed_sweep(warm, y, args, m, bf16=b)
    dfs["torch"], times["torch"] = timed_sweep(feats, y, args, "torch")
    print(f"torch   sweep (batched Newton, float32):          {times['torch']:7.2f}s")
    if bf16:
        dfs["torch_bf16"], times["torch_bf16"] = timed_sweep(feats, y, args, "torch", bf16=True)
        print(f"torch   sweep (batched Newton, bf16 Hessians):    {times['torch_bf16']:7.2f}s")
    dfs["sklearn"], times["sklearn"] = timed_sweep(feats, y, args, "sklearn", blas_threads=1)
    print(f"sklearn sweep (per-site loop, 1 BLAS thread):     {times['sklearn']:7.2f}s")
    print(f"speedup sklearn/torch: {times['sklearn'] / times['torch']:.1f}x" + (
        f"; with bf16 Hessians {times['sklearn'] / times['torch_bf16']:.1f}x" if bf16 else ""))
    if args.sklearn_default_blas:
        _, t = timed_sweep(feats, y, args, "sklearn", blas_threads=None)
        print(f"sklearn sweep (per-site loop, default BLAS threads): {t:7.2f}s -> speedup {t / times['torch']:.1f}x")
    if args.by_group:  # where the time goes: each width on its own
        for d in widths:
            part = {s: x for s, x in feats.items() if x.shape[1] == d}
            (_, tt), (_, ts) = timed_sweep(part, y, args, "torch"), timed_sweep(part, y, args, "sklearn")
            line = f"  d={d:4d} ({len(part):3d} sites): torch {tt:6.2f}s  sklearn {ts:6.2f}s  ratio {ts / tt:5.1f}x"
            if bf16:
                _, tb = timed_sweep(part, y, args, "torch", bf16=True)
                line += f"  | bf16 Hessians {tb:6.2f}s  ratio {ts / tb:5.1f}x"
            print(line)
    b = dfs["sklearn"].set_index("site")
    for m in [k for k in dfs if k != "sklearn"]:
        a = dfs[m].set_index("site")
        acc = (a["accuracy"] - b["accuracy"]).abs()
        auc = (a["auroc"] - b["auroc"]).abs()
        print(f"{m} vs sklearn: |accuracy diff| max {acc.max():.4f} (site {acc.idxmax()}), mean {acc.mean():.5f}; "
              f"sites with diff > 0.01: {int((acc > 0.01).sum())}; |AUROC diff| max {auc.max():.4f}")
    a = dfs["torch"].set_index("site")
    resid = a[a["kind"] == "resid_post"]
    print("resid_post accuracy by layer (torch):", " ".join(f"{v:.2f}" for v in resid["accuracy"]))
    heads = a[a["kind"] == "z"].sort_values("accuracy", ascending=False).head(5)
    print("best heads:", ", ".join(f"{s} {v:.3f}" for s, v in heads["accuracy"].items()))
    if args.csv:
        for m, df in dfs.items():
            df.to_csv(args.csv.with_name(f"{args.csv.stem}_{m}.csv"), index=False)


if __name__ == "__main__":
    main()
