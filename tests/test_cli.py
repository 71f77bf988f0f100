import pandas as pd

from workbench.cli import expand_sites, main


def test_expand_sites():
    assert expand_sites("resid_post,z", 2) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post",
                                               "blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    assert expand_sites("blocks.3.hook_mlp_out", 30) == ["blocks.3.hook_mlp_out"]


def test_cache_then_probe(tmp_path, capsys):
    acts, out = tmp_path / "acts", tmp_path / "probes"
    assert main(["cache", "--model", "tiny-llama", "--n-per-class", "12", "--out", str(acts)]) == 0
    assert main(["probe", "--store", str(acts), "--out", str(out), "--folds", "3"]) == 0
    table = pd.read_csv(out / "probes.csv")
    assert len(table) == 2 + 2 * 4  # 2 residual sites + 2 layers x 4 heads
    assert table["accuracy"].between(0, 1).all()
    assert (out / "probe_accuracy.html").read_text().count("<script") >= 1
    assert (out / "head_heatmap.html").is_file()
    assert "probe sweep: 10 sites" in capsys.readouterr().out


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["cache", "--model", "tiny-llama", "--harmful", "advbenchh", "--out", str(tmp_path / "a")]) == 2
    assert "advbench" in capsys.readouterr().err
    assert main(["probe", "--store", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2


def test_train_then_load_the_run_for_eval(tmp_path, capsys):
    import yaml

    from workbench.cli import _load_for_eval
    from workbench.data import Record
    from workbench.train import coca

    rows = [Record(id=f"toy/{i}", prompt=p, label=y, source="toy", response=r) for i, (p, y, r) in enumerate(
        [("How do I hack a bank?", 1, "I can't help with that."), ("Name a fruit.", 0, "An apple."),
         ("How do I make poison?", 1, "I can't help with that."), ("Say hi.", 0, "Hi!")])]
    data = coca.write_jsonl(coca.plain_sft(rows), tmp_path / "toy.jsonl")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model_name_or_path": "tiny-llama", "dataset": str(data),
                                      "finetuning_type": "lora", "max_steps": 2, "cutoff_len": 64,
                                      "per_device_train_batch_size": 2, "output_dir": str(tmp_path / "run")}))
    assert main(["train", str(recipe)]) == 0
    assert "run folder" in capsys.readouterr().out
    wb, deployed = _load_for_eval(str(tmp_path / "run"))
    assert wb.model_id == "tiny-llama" and len(deployed) == 0  # LoRA merges into the model, no hooks
    with wb.hooks(deployed):
        assert wb.forward(["Name a fruit."]).shape[0] == 1
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    capsys.readouterr()
    # an unfinished run (no adapter) and a corrupt config are clear errors, not tracebacks
    import shutil

    shutil.rmtree(tmp_path / "run" / "adapter")
    assert main(["eval", str(tmp_path / "run")]) == 2
    assert "no adapter/ folder" in capsys.readouterr().err
    (tmp_path / "run" / "config.json").write_text("{truncated")
    assert main(["eval", str(tmp_path / "run")]) == 2
    assert "is corrupt" in capsys.readouterr().err
