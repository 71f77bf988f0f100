"""Execute the notebooks on the real default model with small samples."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# a cell appended to each notebook: its results, checked in the kernel where they live
CHECKS = {
    "00_quickstart.ipynb": "assert x.shape == (2 * N_PER_CLASS, wb.d_model) and len(table) == wb.n_layers\n"
                           "assert set(store.labels.tolist()) == {0, 1} and table.accuracy.max() > 0.75",
    "01_probes.ipynb": "assert set(table.kind) >= {'resid_post', 'z'} and table.accuracy.max() > 0.75\n"
                       "assert len(table) == len(features)",
    "03_finetune_and_evaluate.ipynb":
        "assert list(results) == ['baseline', 'CAFT', 'LoFIT'] and list(table.columns) == ['metric', *results]\n"
        "assert all(0 <= r['suites']['id_harmful']['value'] <= 1 for r in results.values())\n"
        "assert all(read_metrics(r.run_dir) for r in (caft, head, lofit))",
    "04_caft_generalization.ipynb":
        "assert {'untouched', 'plain', 'caft_contrast', 'caft_random'} <= set(df.index)\n"
        "assert ((df >= 0) & (df <= 1)).all().all() and list(df.columns) == ['id_test', 'ood_test']",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["00_quickstart.ipynb", "01_probes.ipynb", "03_finetune_and_evaluate.ipynb",
                                  "04_caft_generalization.ipynb"])
def test_notebook_runs(name, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECKS[name]))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, [f"{o.ename}: {o.evalue}" for o in errors]
