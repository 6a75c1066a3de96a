"""The notebooks a run or a report executes, through papermill.

papermill only *warns* on an unknown parameter, so the parameters a run passes are checked
against each notebook's ``parameters`` cell (``papermill.inspect_notebook``) first.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

from .runs import ROOT, TOP_LEVEL

NOTEBOOKS = ROOT / "notebooks"
RUN_NOTEBOOKS = ("01_data_prep.ipynb", "02_train.ipynb", "03_evaluate.ipynb")
REPORT_NOTEBOOK = "04_compare.ipynb"
REPORT_PARAMETERS = ("study", "report_file", "output", "run_overrides")


@functools.lru_cache(maxsize=None)
def notebook_parameters_with_defaults(name: str) -> dict[str, str]:
    """The names of a notebook's ``parameters`` cell, each with its default's source."""
    import papermill
    return {k: v["default"] for k, v in papermill.inspect_notebook(str(NOTEBOOKS / name)).items()}


def notebook_parameters(name: str) -> frozenset[str]:
    return frozenset(notebook_parameters_with_defaults(name))


def check_notebooks() -> None:
    """The notebooks' parameters cells take every parameter lib passes (else a bug in the
    project, not in a params file)."""
    for names, wanted in ((RUN_NOTEBOOKS, TOP_LEVEL), ((REPORT_NOTEBOOK,), REPORT_PARAMETERS)):
        for nb in names:
            missing = set(wanted) - notebook_parameters(nb)
            if missing:
                raise RuntimeError(f"notebooks/{nb}: the parameters cell lacks {sorted(missing)}")


@functools.lru_cache(maxsize=None)
def _ipc_kernel_manager():
    """A kernel manager whose kernels talk to papermill over local IPC sockets (in a fresh
    temporary folder per kernel) instead of TCP ports: nothing listens on a port, and
    ipykernel's 'Kernel is running over TCP without encryption' warning, printed by every
    kernel start, is gone."""
    import shutil
    import tempfile

    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", str(Path(tempfile.mkdtemp(prefix="twotower-kernel-")) / "kernel"))
            super().__init__(**kwargs)

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            if not restart:
                shutil.rmtree(Path(self.ip).parent, ignore_errors=True)

    return IPCKernelManager


def execute(notebook: str, parameters: dict, out_dir: Path, log=None, html: bool = False) -> Path:
    """Execute one notebook with papermill into ``out_dir``; its cell output goes to ``log``
    (default: this process's stdout/stderr). ``html``: also export the executed notebook
    to HTML beside it (nbconvert), to read a run without starting Jupyter."""
    import papermill
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / notebook
    papermill.execute_notebook(str(NOTEBOOKS / notebook), str(target), parameters=parameters,
                               cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False,
                               log_output=True, stdout_file=log or sys.stdout, stderr_file=log or sys.stderr,
                               kernel_manager_class=_ipc_kernel_manager())
    if html:
        export_html(target)
    return target


def export_html(executed: Path) -> Path:
    """The executed notebook as a standalone HTML page beside it (nbconvert)."""
    import nbconvert
    import nbformat
    from .files import atomic_write_text
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nbformat.read(str(executed), as_version=4))
    out = executed.with_suffix(".html")
    atomic_write_text(out, body)
    return out
