"""Does a COCA model decide "unsafe" on encoded requests because of what they ask, or because they
are encoded? Its decisions on the encoding suite's harmful requests (stored by the experiment)
beside its decisions on benign requests in the same seven encodings (evaluated here), per encoding.

    python examples/encoded_decisions.py --run runs/safety_512 --seed 0 \\
        --methods coca_lora_self_512_wrapped_long,coca_lora_self_512_wrapped_long_enc

The benign side: ``--n`` short benign test prompts (benign instructions of at most 200 characters
and the benign twins, test splits, a seeded sample), each in every encoding, written to
``{run}/encoded_benign/encoded_benign.jsonl`` and evaluated with ``workbench eval --prompts``
(40 new tokens, as the experiment's suites) into ``{run}/encoded_benign/{method}_seed{seed}/``.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path


def write_prompts(path: Path, n: int, seed: int = 0) -> Path:
    from workbench.data import ENCODINGS, load_dataset

    pool = [r for r in load_dataset("benign_instructions", split="test") if len(r.prompt) <= 200]
    pool += load_dataset("twins_benign", split="test")
    picks = random.Random(seed).sample(sorted(pool, key=lambda r: r.id), min(n, len(pool)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for rec in picks:
            for name, encode in ENCODINGS.items():
                fh.write(json.dumps({"prompt": encode(rec.prompt), "label": "benign", "category": name}) + "\n")
    return path


def main() -> None:
    from workbench.data import ENCODINGS
    from workbench.train.coca import decisions_by_encoding
    from workbench.train.data import TRAIN_ENCODINGS

    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/safety_512", help="the safety experiment's folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", required=True, help="comma-separated methods trained in that folder")
    ap.add_argument("--n", type=int, default=30, help="benign prompts (each in all seven encodings)")
    args = ap.parse_args()
    run = Path(args.run)
    prompts = run / "encoded_benign" / "encoded_benign.jsonl"
    if not prompts.is_file():
        write_prompts(prompts, args.n)
    for method in args.methods.split(","):
        out = run / "encoded_benign" / f"{method}_seed{args.seed}"
        if not (out / "eval.json").is_file():
            model = run / f"seed{args.seed}" / "train" / method / "sft" / "lora"
            subprocess.run([sys.executable, "-m", "workbench.cli", "eval", str(model), "--prompts", str(prompts),
                            "--only-prompts", "--max-new-tokens", "40", "--out", str(out)], check=True)
        benign = json.loads((out / "eval.json").read_text())["suites"][f"{prompts.stem}_benign"]["samples"]
        suite = json.loads((run / f"seed{args.seed}" / "eval" / method / "eval.json").read_text())
        harmful = decisions_by_encoding(suite["suites"]["ood_encoding"]["samples"])
        benign_rows = decisions_by_encoding(benign)
        print(f"\n{method}, seed {args.seed}: decided unsafe, encoded harmful (suite) vs encoded benign")
        for name in ENCODINGS:
            h, b = harmful.get(name, {"n": 0, "unsafe": 0}), benign_rows.get(name, {"n": 0, "unsafe": 0})
            seen = "trained" if name in TRAIN_ENCODINGS else "unseen"
            print(f"  {name:10s} {seen:8s} harmful {h['unsafe']:3d}/{h['n']:<3d}  benign {b['unsafe']:3d}/{b['n']:<3d}")


if __name__ == "__main__":
    main()
