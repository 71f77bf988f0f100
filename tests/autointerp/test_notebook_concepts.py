"""Execute notebooks/02_concepts.ipynb on the real default model with a small sample."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "02_concepts.ipynb"


@pytest.mark.slow
def test_concepts_notebook_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("WORKBENCH_LLM_MODEL", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs) + "".join(
        str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "ConceptSet(" in text and "selected" in text
    saved = tmp_path / "wb-nb02-12" / "concepts.safetensors"
    from workbench.concepts import ConceptSet

    cs = ConceptSet.load(saved)
    assert cs[0].label == "harmful request (harmful - benign)" and cs[0].selected
    accepted = [c for c in cs if c.label and c.label == (c.meta.get("autointerp") or {}).get("label")]
    assert len(accepted) == 1 and not accepted[0].selected
    html = "".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "Most positive" in html and "&lt;" in html  # the examples' markup arrives escaped
