"""The SAE command line: ``python -m workbench.concepts.sae train | info`` (and ``workbench sae train``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .sae import ARCHITECTURES, MANIFEST, WorkbenchSAE, train_sae
from .sae_data import DEFAULT_DATASETS, DEFAULT_SITE, build_training_store, common_prefix_length

if TYPE_CHECKING:
    from ..model import Workbench


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``sae train`` (for ``workbench sae train`` to reuse)."""
    p.add_argument("--site", default=DEFAULT_SITE, help="site to train on")
    p.add_argument("--out", required=True, help="folder to write the SAE to, e.g. saes/smollm2-L15-topk")
    p.add_argument("--store", help="an ActivationStore folder with token rows (position all); built if missing "
                                   "(default $WORKBENCH_HOME/stores/sae-MODEL-SITE)")
    p.add_argument("--model", default=None, help="model for building the store (default: the embedded model)")
    p.add_argument("--datasets", default=",".join(DEFAULT_DATASETS), help="datasets for building the store")
    p.add_argument("--max-records", type=int, default=None, help="records per dataset when building the store")
    p.add_argument("--arch", choices=ARCHITECTURES, default="topk", help="sae-lens architecture")
    p.add_argument("--d-sae", type=int, default=None, help="latents (default 4 x d_in)")
    p.add_argument("--k", type=int, default=32, help="active latents per token")
    p.add_argument("--tokens", type=int, default=None, help="training samples (default: --epochs passes)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the store (when --tokens is not given)")
    p.add_argument("--batch-size", type=int, default=256, help="activation rows per optimizer step")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--normalize", default="auto",
                   help="sae-lens normalize_activations: auto (whiten with >= 50 x d_in rows), "
                        "covariance_whitening, expected_average_only_in, none")
    p.add_argument("--skip-first", default="auto", help="tokens skipped per record; 'auto' = the chat template's fixed prefix")
    p.add_argument("--eval-fraction", type=float, default=0.1, help="share of rows held out for the metrics")
    p.add_argument("--seed", type=int, default=0, help="initialization and shuffling seed")
    return p


def run_train(args: argparse.Namespace) -> WorkbenchSAE:
    """Run ``sae train`` from parsed arguments; prints the metrics."""
    from ..activations import ActivationStore
    from ..models import DEFAULT_MODEL, workbench_home

    wb: Workbench | None = None
    default_store = workbench_home() / "stores" / f"sae-{args.model or DEFAULT_MODEL}-{args.site}".replace("/", "_")
    store_path = Path(args.store) if args.store else default_store
    needs_wb = args.skip_first == "auto" or not (store_path / "manifest.json").is_file() or \
        not ActivationStore(store_path, verify=False).complete
    if needs_wb:
        from ..model import Workbench

        wb = Workbench.load(args.model) if args.model else Workbench.load()
    if not (store_path / "manifest.json").is_file() or not ActivationStore(store_path, verify=False).complete:
        assert wb is not None  # needs_wb holds
        print(f"building activation store {store_path} ...")
        build_training_store(store_path, wb, args.site, [d for d in args.datasets.split(",") if d],
                             max_records=args.max_records)
    skip = common_prefix_length(wb) if wb is not None and args.skip_first == "auto" else int(args.skip_first)
    result = train_sae(ActivationStore(store_path), args.site, args.out, architecture=args.arch, d_sae=args.d_sae,
                       k=args.k, total_tokens=args.tokens, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       normalize_activations=args.normalize, skip_first=skip, eval_fraction=args.eval_fraction,
                       seed=args.seed)
    print(json.dumps(result.metrics, indent=1))
    return result


def cli_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbench.concepts.sae",
                                description="Train and inspect sparse autoencoders (sae-lens) on cached activations.")
    sub = p.add_subparsers(dest="command", required=True)
    add_train_arguments(sub.add_parser("train", help="train an SAE on an activation store"))
    info = sub.add_parser("info", help="print an SAE folder's manifest and metrics")
    info.add_argument("path")
    args = p.parse_args(argv)
    if args.command == "train":
        run_train(args)
    else:
        print(json.dumps(json.loads((Path(args.path) / MANIFEST).read_text()), indent=1))
    return 0

