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
