"""The notebooks a run or a report executes, through papermill.

papermill only *warns* on an unknown parameter, so the parameters a run passes are checked
against each notebook's ``parameters`` cell first (read as ``papermill.inspect_notebook``
reads it: ``notebook_parameters_with_defaults``).
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
    """The names of a notebook's ``parameters`` cell (the first cell tagged so, as papermill
    finds it), each with its default's source. The same names and values as
    ``papermill.inspect_notebook`` (a test holds them together), read with ``json`` and ``ast``:
    importing papermill (nbformat, jsonschema) costs about 2 s, more than ``--check``'s work."""
    import ast
    import json

    path = NOTEBOOKS / name
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"{path}: not a readable notebook ({type(exc).__name__}: {exc})") from exc
    cell = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        return {}
    source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    names = {}
    for node in ast.parse(source, filename=f"{path} (parameters cell)").body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target = node.target
        else:
            continue
        if isinstance(target, ast.Name):
            names[target.id] = ast.get_source_segment(source, node.value)
    return names


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


@functools.lru_cache(maxsize=None)
def _shared_client_kernel_manager():
    """The IPC kernel manager whose ``client()`` is one client, made once: every notebook
    nbclient runs in a session's kernel asks for a client and, the kernel not being its own,
    never closes it; one client, closed with the session, leaves no socket behind."""
    class SharedClientKernelManager(_ipc_kernel_manager()):
        shared_client = None

        def client(self, **kwargs):
            if self.shared_client is None:
                kc = super().client(**kwargs)
                start = kc.start_channels

                def start_once(*args, **kw):  # each notebook starts them; a channel starts once
                    if not kc.channels_running:
                        start(*args, **kw)
                kc.start_channels = start_once
                self.shared_client = kc
            return self.shared_client

    return SharedClientKernelManager


def execute(notebook: str, parameters: dict, out_dir: Path, log=None, html: bool = False,
            session: "KernelSession | None" = None) -> Path:
    """Execute one notebook with papermill into ``out_dir``; its cell output goes to ``log``
    (default: this process's stdout/stderr). ``html``: also export the executed notebook
    to HTML beside it (nbconvert), to read a run without starting Jupyter. ``session``: run
    it in that session's kernel (else in a kernel of its own, started and shut down here)."""
    import papermill
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / notebook
    kernel = {"kernel_manager_class": _ipc_kernel_manager()} if session is None else {"km": session.kernel()}
    try:
        papermill.execute_notebook(str(NOTEBOOKS / notebook), str(target), parameters=parameters,
                                   cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False,
                                   log_output=True, stdout_file=log or sys.stdout, stderr_file=log or sys.stderr,
                                   **kernel)
    except BaseException:
        if session is not None:
            session.close()  # a failed or interrupted notebook: the next one gets a fresh kernel
        raise
    if html:
        export_html(target)
    return target


class KernelSession:
    """One kernel for a sequence of notebooks (``execute(..., session=...)``): the kernel
    start and the imports (torch, pandas, matplotlib, lib: about 5 s of CPU per notebook,
    several times the work of a cached or small run) are paid once per session instead of
    once per notebook. Before each notebook but the first the kernel is brought back to the
    state of a fresh one as far as a notebook can see: its namespace, its history and its
    execution count are reset, and matplotlib's figures closed; imported modules stay
    loaded (that is the saving). Each run sets what it depends on itself (seeds, torch
    threads, deterministic algorithms), so a run gives the same metrics in a shared kernel
    as in its own (tests/test_runner.py checks it). After a failed notebook the kernel is
    shut down and the next notebook starts a fresh one."""

    RESET = ("get_ipython().reset(new_session=True)\n"
             "import sys as _sys\n"
             "if 'matplotlib.pyplot' in _sys.modules: _sys.modules['matplotlib.pyplot'].close('all')\n"
             "del _sys\n")

    def __init__(self):
        self.km = None
        self.used = False
        self.starts = 0

    def kernel(self):
        """The started kernel manager, reset if a notebook ran in it before."""
        from jupyter_core.utils import run_sync
        if self.km is not None and not run_sync(self.km.is_alive)():
            self.close()
        if self.km is None:
            km = _shared_client_kernel_manager()(kernel_name="python3")
            run_sync(km.start_kernel)(cwd=str(NOTEBOOKS))
            self.km, self.used = km, False
            self.starts += 1
        elif self.used:
            self._reset()
        self.used = True
        return self.km

    def _reset(self) -> None:
        from jupyter_core.utils import run_sync
        kc = self.km.client()
        kc.start_channels()
        run_sync(kc.wait_for_ready)(timeout=60)
        reply = run_sync(kc.execute_interactive)(self.RESET, silent=True, store_history=False, timeout=60)
        if reply["content"]["status"] != "ok":
            self.close()
            raise RuntimeError(f"could not reset the shared kernel: {reply['content']}")

    def close(self) -> None:
        from jupyter_core.utils import run_sync
        km, self.km = self.km, None
        if km is not None:
            if km.shared_client is not None:
                km.shared_client.stop_channels()
            try:
                if run_sync(km.is_alive)():
                    run_sync(km.shutdown_kernel)(now=True)
            finally:
                run_sync(km.cleanup_resources)()

    def __enter__(self) -> "KernelSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def export_html(executed: Path) -> Path:
    """The executed notebook as a standalone HTML page beside it (nbconvert)."""
    import nbconvert
    import nbformat
    from .files import atomic_write_text
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nbformat.read(str(executed), as_version=4))
    out = executed.with_suffix(".html")
    atomic_write_text(out, body)
    return out
