"""The generalization experiment end to end on the tiny model: every artifact, resumption, errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from workbench.generalization import GeneralizationError, GeneralizationExperiment, run_generalization

SPEC = {
    "task": "gender_pronoun", "task_options": {"professions": "extended", "answer_format": "pronoun"},
    "model": "tiny-llama", "n_train": 24, "n_test": 12, "seeds": [0], "layers": [0, 1], "n_components": 3,
    "leakage_n": 20,
    "recipe": {"finetuning_type": "full", "learning_rate": 1.0e-3, "max_steps": 2, "per_device_train_batch_size": 4,
               "cutoff_len": 96},
    "methods": {"caft_probe": {"finetuning_type": "caft", "caft_base": "full", "caft_concepts": "@probe_pick"},
                "caft_random": {"finetuning_type": "caft", "caft_base": "full", "caft_concepts": "@random"},
                "caft_person": {"finetuning_type": "caft", "caft_base": "full", "caft_concepts": "@person_pick"},
                "caft_contrast": {"finetuning_type": "caft", "caft_base": "full", "caft_concepts": "@contrast",
                                  "caft_ablation": "mean"},
                "caft_sae": {"finetuning_type": "caft", "caft_base": "full", "caft_concepts": "@sae_pick"}},
    "sae_width": 128, "sae_epochs": 1, "sae_top": 4,
    "contrast_position": "token:doctor|nurse|surgeon|mechanic|firefighter|plumber|electrician|receptionist|"
                         "secretary|nanny|hairdresser|midwife",
    "person_pick": {"0": {"blocks.1.hook_resid_post": [0, 2]}},   # a pick may leave layers out
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen")
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "output_dir": str(folder / "out")}))
    report = run_generalization(path)
    return path, folder / "out", report


def test_artifacts(finished):
    _, out, report = finished
    assert report.is_file() and "plotly" in report.read_text()
    res = json.loads((out / "results.json").read_text())
    assert set(res["summary"]) == {"plain", "caft_probe", "caft_random", "caft_person", "caft_contrast", "caft_sae"}
    for m in res["summary"].values():
        assert 0 <= m["ood_test"]["mean"] <= 1 and m["ood_test"]["n_prompts"] == 12
        lo, hi = m["ood_test"]["pooled_ci"]
        assert lo <= m["ood_test"]["mean"] <= hi
    seed = res["seeds"]["0"]
    # the per-prompt outcomes agree with the accuracy
    for method in ("plain", "caft_probe"):
        met = seed[method]["metrics"]["ood_test"]
        assert abs(sum(met["correct"]) / len(met["correct"]) - met["accuracy"]) < 1e-9
        assert abs(met["flipped"] - (1 - met["accuracy"])) < 1e-9      # OOD: every prompt has a spurious answer
    assert "metrics_ablation_kept" in seed["caft_probe"] and "leakage" in seed["caft_probe"]
    assert {r["attribute"] for r in seed["caft_probe"]["leakage"]} == {"spurious", "intended"}
    # matched controls: random has as many directions per layer as the probe's pick (k), person as picked
    k = seed["concepts"]["k"]
    from workbench.interventions import Intervention

    rnd = Intervention.load(out / "train" / "0" / "caft_random" / "caft_ablation")
    assert all(q.shape[1] == k for q in rnd.Q.values())
    person = Intervention.load(out / "train" / "0" / "caft_person" / "caft_ablation")
    assert {s: q.shape[1] for s, q in person.Q.items()} == {"blocks.1.hook_resid_post": 2}
    assert (out / "concepts" / "0" / "examples.html").is_file()
    # @sae_pick: an SAE per layer, latents by attribution, picked among them; ablated by caft_sae
    sae_info = json.loads((out / "concepts" / "0" / "sae_scores.json").read_text())
    assert len(sae_info["scores"]) == 2 * 4 and set(seed["concepts"]["sae_pick"]) == set(sae_info["picked"])
    assert all((out / "concepts" / "0" / "sae" / s / "cfg.json").is_file() for s in ("blocks.0.hook_resid_post",
                                                                                     "blocks.1.hook_resid_post"))
    sae_abl = Intervention.load(out / "train" / "0" / "caft_sae" / "caft_ablation")
    assert sum(q.shape[1] for q in sae_abl.Q.values()) == len(sae_info["picked"]) >= 2
    # @contrast: one direction per layer, the stereotype's difference of means, mean-ablated
    con = Intervention.load(out / "train" / "0" / "caft_contrast" / "caft_ablation")
    assert all(q.shape[1] == 1 for q in con.Q.values()) and con.mean is not None
    # every CAFT run read the seed's one capture of the base model's token statistics
    stats = out / "concepts" / "0" / "token_stats.safetensors"
    for method in ("caft_probe", "caft_random", "caft_person", "caft_contrast", "caft_sae"):
        assert json.loads((out / "train" / "0" / method / "config.json").read_text())["recipe"]["caft_stats"] == str(stats)
    from safetensors.torch import load_file

    saved = load_file(str(stats))
    assert all(torch.allclose(con.mean[s], saved[f"mean/{s}"]) for s in con.Q)
    md = (out / "results.md").read_text()
    assert "| caft_random |" in md and "Leakage" in md and "Paired tests" in md
    # paired tests: every pair of the 5 methods on both splits, recomputed from the saved outcomes
    from workbench.stats import mcnemar_exact

    assert len(res["paired"]) == 2 * 15
    t = next(r for r in res["paired"] if r["split"] == "ood_test" and (r["a"], r["b"]) == ("plain", "caft_random"))
    want = mcnemar_exact(seed["plain"]["metrics"]["ood_test"]["correct"], seed["caft_random"]["metrics"]["ood_test"]["correct"])
    assert t["p_value"] == want["p_value"] and t["diff"] == want["diff"] and t["p_holm"] >= t["p_value"]
    # the static figure: one bar per method and split (+ 2 legend swatches), one whisker each
    import xml.dom.minidom

    svg = xml.dom.minidom.parseString((out / "figure.svg").read_text())
    assert len(svg.getElementsByTagName("rect")) == 2 * len(res["summary"]) + 2
    titles = [t.firstChild.data for t in svg.getElementsByTagName("title")]
    assert f"plain OOD: {res['summary']['plain']['ood_test']['mean']:.3f}" in titles


def test_rerun_skips_finished_steps(finished):
    path, out, _ = finished
    stamp = (out / "train" / "0" / "plain" / "summary.json").stat().st_mtime
    evals = (out / "eval" / "0" / "caft_probe.json").read_text()
    run_generalization(path)
    assert (out / "train" / "0" / "plain" / "summary.json").stat().st_mtime == stamp
    assert (out / "eval" / "0" / "caft_probe.json").read_text() == evals


def test_bad_files():
    with pytest.raises(GeneralizationError, match="did you mean 'seeds'"):
        GeneralizationExperiment.from_dict({**SPEC, "seedz": [1]})
    with pytest.raises(GeneralizationError, match="not a generated task"):
        GeneralizationExperiment.from_dict({**SPEC, "task": "advbench"})
    with pytest.raises(GeneralizationError, match="should be a list"):
        GeneralizationExperiment.from_dict({**SPEC, "seeds": 3})


def test_contrast_at_several_positions(tmp_path):
    """One difference-of-means direction per position and layer, orthonormalized; the first is the
    plain difference of the two groups' mean activations at that position."""
    import torch

    from workbench.concepts import ConceptSet
    from workbench.generalization.experiment import _load, attribute_labels, contrast_concepts, task_records

    positions = [SPEC["contrast_position"], "last"]
    exp = GeneralizationExperiment.from_dict({**SPEC, "contrast_position": positions})
    base, recs = _load(exp), task_records(exp, "train", 0)
    spur = attribute_labels(recs, exp.attributes)["spurious"]
    path = tmp_path / "contrast.safetensors"
    contrast_concepts(exp, base, recs, spur, path)
    cs = ConceptSet.load(path)
    assert cs.meta["contrast_positions"] == positions
    for site in exp.sites:
        q = torch.stack([c.direction for c in cs.select(site=site)])
        assert q.shape == (2, base.d_model)
        torch.testing.assert_close(q @ q.T, torch.eye(2), atol=1e-5, rtol=0)
        acts = dict(base.capture([r.prompt for r in recs], [site], position=positions[0], progress=False))[site]
        y = torch.tensor(spur, dtype=torch.bool)
        d = acts[y].mean(0) - acts[~y].mean(0)
        torch.testing.assert_close(q[0], d / d.norm(), atol=1e-4, rtol=0)
    with pytest.raises(GeneralizationError, match="contrast_position"):
        GeneralizationExperiment.from_dict({**SPEC, "contrast_position": [1, 2]})
