"""How many generated tokens the refusal judge needs: re-judge stored evaluation generations cut to
their first k tokens and count the verdicts that differ from the full-length judgement.

Reads ``eval.json`` files written by ``workbench evaluate`` / ``workbench experiment`` (their refusal
suites keep every prompt and response); no model is run, so it is cheap. A suite can then generate
only the smallest k whose verdicts all agree, and its decode time shrinks by about k / max_new_tokens.

    python bench/judge_tokens.py runs/safety_full/seed0/eval/*/eval.json [--ks 4,8,12,16,24,32]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("evals", nargs="+", help="eval.json files")
    ap.add_argument("--ks", default="4,8,12,16,20,24,32")
    args = ap.parse_args()

    from workbench.evals import default_judge
    from workbench.models import load_tokenizer

    tok = load_tokenizer()
    judge = default_judge()
    ks = [int(k) for k in args.ks.split(",")]
    total = {k: 0 for k in ks}
    n_all = 0
    print(f"{'eval':<40} {'suite':<14} {'n':>4} " + " ".join(f"k={k:<3}" for k in ks) + "   (verdicts that differ from full length)")
    for path in args.evals:
        suites = json.load(open(path))["suites"]
        for name, suite in suites.items():
            if suite.get("kind") not in ("refusal", "attack", "compliance", "overrefusal"):
                continue
            prompts, responses, _ = zip(*suite["samples"])
            full = judge(list(prompts), list(responses))
            ids = [tok(r, add_special_tokens=False).input_ids for r in responses]
            diffs = []
            for k in ks:
                cut = [tok.decode(i[:k], skip_special_tokens=True) for i in ids]
                d = int((judge(list(prompts), cut) != full).sum())
                total[k] += d
                diffs.append(d)
            n_all += len(responses)
            label = os.path.basename(os.path.dirname(path))
            print(f"{label:<40} {name:<14} {len(responses):>4} " + " ".join(f"{d:<5}" for d in diffs))
    print(f"{'all':<40} {'':<14} {n_all:>4} " + " ".join(f"{total[k]:<5}" for k in ks))


if __name__ == "__main__":
    main()
