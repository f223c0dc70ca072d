"""notebooks/car_circuit.ipynb runs top to bottom on the toy model (small settings)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "car_circuit.ipynb"


@pytest.mark.slow
def test_car_circuit_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("CIRCUITS_STEPS", "24")
    monkeypatch.setenv("CIRCUITS_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []))
    assert "car unit mixed4b:" in text
    assert "most selective for" in text
    assert "ablating the" in text
    for name in ("circuit.json", "circuit.png", "report.html"):
        assert (tmp_path / "out" / name).is_file(), name
    assert os.path.getsize(tmp_path / "out" / "circuit.png") > 10_000
