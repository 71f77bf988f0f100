"""Benchmark: caching all 30 ``blocks.*.hook_resid_post`` of the default model on real prompts.

Every method runs on the same chat-formatted, left-padded batches, in interleaved rounds; the
median round time of each is printed as a ratio to the plain HF forward (no capture) measured in
the same run. Workbench rows include writing the activations to disk (ActivationStore).

    python bench/capture.py [--n 96] [--batch-size 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import nnsight

    from workbench import ActivationStore, Workbench, models
    from workbench.data import harmful_vs_benign

    records = harmful_vs_benign(n_per_class=args.n // 2, seed=0, match_lengths=True)
    prompts = [r.prompt for r in records][: args.n]
    wb = Workbench.load()  # transformer_lens backend (the bridge wraps this model in place)
    plain, tok = models.load()  # an untouched HF copy: the baseline
    wb_nn = Workbench(plain, tok, models.DEFAULT_MODEL, backend="nnsight")
    nn_model = nnsight.TransformersModel(plain, tokenizer=tok)
    sites = [f"blocks.{l}.hook_resid_post" for l in range(wb.n_layers)]
    batches = [wb.tokenize(prompts[i:i + args.batch_size]) for i in range(0, len(prompts), args.batch_size)]
    n_tokens = sum(int(b.attention_mask.sum()) for b in batches)
    tmp = tempfile.mkdtemp(prefix="wb-bench-")

    def hf_plain():
        for b in batches:
            plain(input_ids=b.input_ids, attention_mask=b.attention_mask)

    def hf_hidden():
        for b in batches:
            hs = plain(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True)
            [h.clone() for h in hs.hidden_states[1:]]

    def tl_cache():
        for b in batches:
            wb.bridge.run_with_cache(b.input_ids, attention_mask=b.attention_mask,
                                     names_filter=lambda n: n.endswith("hook_resid_post"))

    def nnsight_save():
        for b in batches:
            saved: list = []  # nnsight runs the body in its own frame: collect through an object
            with nn_model.trace(input_ids=b.input_ids, attention_mask=b.attention_mask):
                for layer in nn_model.model.layers:
                    saved.append(layer.output.save())
            assert len(saved) == wb.n_layers

    def workbench_store(w, name):
        def run():
            folder = os.path.join(tmp, name)
            shutil.rmtree(folder, ignore_errors=True)
            ActivationStore.build(folder, w, prompts, sites, position="all", batch_size=args.batch_size,
                                  shard_size=4 * args.batch_size, progress=False)
        return run

    methods = {
        "HF forward, no capture (baseline)": hf_plain,
        "HF output_hidden_states=True": hf_hidden,
        "TransformerLens bridge run_with_cache": tl_cache,
        "nnsight .save() of 30 layer outputs": nnsight_save,
        "Workbench (transformer_lens) -> disk": workbench_store(wb, "tl"),
        "Workbench (nnsight) -> disk": workbench_store(wb_nn, "nn"),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    with torch.inference_mode():
        for f in methods.values():  # warm-up
            f()
        for _ in range(args.rounds):
            for name, f in methods.items():
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
    shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(times["HF forward, no capture (baseline)"])
    print(f"{len(prompts)} prompts, {n_tokens} tokens, batch {args.batch_size}, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads; median seconds and ratio to the plain forward:")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:42s} {med:7.2f}s  {med / base:5.2f}x  {n_tokens / med:6.0f} tok/s")


if __name__ == "__main__":
    main()
