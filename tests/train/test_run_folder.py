"""RunFolder: the format tag, clear errors for missing / corrupt / newer folders, atomic JSON,
metrics truncation on resume."""

import json

import pytest

from workbench.train import RunFolder, RunFolderError
from workbench.train.run_folder import FORMAT, VERSION


def test_config_round_trip_with_format_tag_and_no_temporary_files(tmp_path):
    run = RunFolder(tmp_path)
    assert not run.is_run() and not run.finished()
    run.write_config({"model_id": "m", "recipe": {"finetuning_type": "lora"}})
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg[FORMAT] == VERSION and run.config == cfg and run.is_run()
    run.write_summary({"steps": 3})
    assert run.finished() and run.summary == {"steps": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "summary.json"]


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(RunFolderError, match="not a training run folder"):
        _ = RunFolder(tmp_path).config
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="is corrupt"):
        _ = RunFolder(tmp_path).config
    (tmp_path / "config.json").write_text(json.dumps({"recipe": {}}))
    with pytest.raises(RunFolderError, match="no recipe / model_id"):
        _ = RunFolder(tmp_path).config
    (tmp_path / "config.json").write_text(json.dumps({FORMAT: VERSION + 1, "recipe": {}, "model_id": "m"}))
    with pytest.raises(RunFolderError, match="newer workbench"):
        _ = RunFolder(tmp_path).config
    with pytest.raises(RunFolderError, match="has not finished"):
        _ = RunFolder(tmp_path).summary
    with pytest.raises(RunFolderError, match="no adapter/ folder"):
        RunFolder(tmp_path).require("adapter")


def test_truncate_metrics_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    run = RunFolder(tmp_path)
    for step in (1, 2, 3, 4):
        run.append_metrics({"step": step, "loss": 1.0 / step})
    run.truncate_metrics(2)
    assert [m["step"] for m in run.metrics()] == [1, 2]
    assert run.metrics()[1]["loss"] == 0.5
