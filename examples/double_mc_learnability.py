"""The learnability check of double multiple choice's question types (CAFT pairs only types the
model can learn alone): plain fine-tuning with caft_double_mc.yaml's recipe on each type alone
(task ``single:{type}``), accuracy on held-out items.

    python examples/double_mc_learnability.py [--types agreement,pronoun,sentiment,compare] [--out runs/dmc_single]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml


def main() -> None:
    from workbench.data.tasks import QUESTION_TYPES
    from workbench.generalization.experiment import run_generalization

    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default=",".join(sorted(QUESTION_TYPES)))
    ap.add_argument("--out", default="runs/dmc_single")
    ap.add_argument("--file", default=str(Path(__file__).with_name("caft_double_mc.yaml")))
    args = ap.parse_args()
    base = yaml.safe_load(Path(args.file).read_text())
    rows = []
    for qtype in args.types.split(","):
        exp = {k: v for k, v in base.items() if k not in ("quick", "methods")}
        exp.update(task=f"single:{qtype}", seeds=[0], methods={}, leakage_n=0)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(exp, f)
        out = Path(args.out) / qtype
        run_generalization(f.name, out=out)
        res = json.loads((out / "results.json").read_text())
        untouched = res["baseline"]["metrics"]["id_test"]["accuracy"]
        tuned = res["seeds"]["0"]["plain"]["metrics"]["id_test"]
        rows.append((qtype, untouched, tuned["accuracy"], *tuned["accuracy_ci"], tuned["n"]))
    print("| type | untouched | plain fine-tuning [95% Wilson] | n |\n|---|---|---|---|")
    for t, u, a, lo, hi, n in rows:
        print(f"| {t} | {u:.3f} | {a:.3f} [{lo:.2f}, {hi:.2f}] | {n} |")


if __name__ == "__main__":
    main()
