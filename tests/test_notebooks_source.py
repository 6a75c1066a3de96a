"""The notebooks' source of truth is notebooks/*.py (jupytext percent format); every
committed .ipynb must be exactly its .py's cells, without outputs (regenerate with
`make sync-notebooks`, i.e. `jupytext --to ipynb --update notebooks/0*.py`)."""
import ast
from pathlib import Path

import jupytext
import nbformat
import pytest

from lib.core import notebooks
from lib.core.runs import TOP_LEVEL

pytestmark = pytest.mark.unit
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
IPYNB = sorted(NOTEBOOKS.glob("*.ipynb"))


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def _parameters(nb) -> list:
    return [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]


def test_every_notebook_has_its_source_and_every_source_its_notebook():
    assert IPYNB, "no notebooks found"
    assert {p.stem for p in IPYNB} == {p.stem for p in NOTEBOOKS.glob("*.py")}
    assert {p.name for p in IPYNB} == {*notebooks.RUN_NOTEBOOKS, notebooks.REPORT_NOTEBOOK}


@pytest.mark.parametrize("path", IPYNB, ids=lambda p: p.name)
def test_notebook_is_its_source_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    src = jupytext.read(path.with_suffix(".py"))
    assert _cells(nb) == _cells(src), f"{path.name} differs from {path.stem}.py: run `make sync-notebooks`"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert src.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs committed"
        assert set(cell.metadata) <= {"tags"}, f"{path.name}: cell metadata {sorted(cell.metadata)}"
    nb_params, src_params = _parameters(nb), _parameters(src)
    assert len(nb_params) == 1 and len(src_params) == 1, f"{path.name}: one cell tagged 'parameters'"
    assert nb_params[0].source.strip() == src_params[0].source.strip()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0] is nb_params[0], f"{path.name}: the parameters cell is the first code cell"


@pytest.mark.parametrize("path", IPYNB, ids=lambda p: p.name)
def test_parameters_cell_names_exactly_what_lib_passes(path):
    (cell,) = _parameters(nbformat.read(path, as_version=4))
    names = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)}
    wanted = set(notebooks.REPORT_PARAMETERS) if path.name == notebooks.REPORT_NOTEBOOK \
        else {*TOP_LEVEL, "params_file"}
    assert names == wanted
