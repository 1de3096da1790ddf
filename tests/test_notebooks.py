"""The analysis notebooks execute top to bottom on a pipeline run (``$NAS_PROXY_RUN``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from test_pipeline import tiny_pipeline  # noqa: F401  (the session's shared pipeline run)

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("name", ["analyze_search", "distilled_images"])
def test_notebook_executes(name, tiny_pipeline, monkeypatch):  # noqa: F811
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager

    # "python3" must be this interpreter (jupyter_client runs a spec whose argv[0] is "python"
    # with sys.executable), so the kernel imports the nas_proxy under test.
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] in ("python", sys.executable), spec.argv
    monkeypatch.setenv("NAS_PROXY_RUN", str(tiny_pipeline["out"]))
    monkeypatch.setenv("NAS_PROXY_NO_PROGRESS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel's torch: see tests/test_rank.py
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=180,
        resources={"metadata": {"path": str(NOTEBOOKS.parent)}},
    )
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert not errors
    assert os.environ["NAS_PROXY_RUN"] == str(tiny_pipeline["out"])
