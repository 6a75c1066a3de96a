"""What the notebooks call: resolve a run's params, then data prep -> train -> evaluate,
and render a study's report. Each study module (``lib/studies/<study>.py``) supplies
its defaults and steps; this module holds what all studies share.

Every step is cached on disk by the hash of the params it depends on, and builds what it
needs upstream if missing, so any notebook can run alone (Jupyter, nbmake) and ``make``
only redoes what changed.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from .config import ParamsError, merge_checked, params_hash

ROOT = Path(__file__).resolve().parent.parent
BUILD_ENV = "TWOTOWER_BUILD_DIR"
STUDIES = ("movielens", "wikiseq")
TOP_LEVEL = ("study", "run", "data", "model", "loss", "train", "evaluate", "seed", "device")


@functools.lru_cache(maxsize=None)
def code_version(study: str = "movielens") -> str:
    """Hash of the library source a study runs (lib/*.py, lib/studies/<study>*.py and the
    study's CODE_PATHS): cached results are reused only by the same code. Read once per
    process, when the code is imported, so an edit made while a run is going neither
    splits that run across two cache keys nor labels its results with code it did not run."""
    import hashlib
    h = hashlib.sha256()
    mod = study_module(study)
    if hasattr(mod, "KEY_CODE"):  # the files that compute results (not report layout, CLI, ...)
        files = {ROOT / rel for rel in mod.KEY_CODE}
    else:
        files = set((ROOT / "lib").glob("*.py")) | set((ROOT / "lib" / "studies").glob(f"{study}*.py"))
        for extra in getattr(mod, "CODE_PATHS", ()):
            files |= set((ROOT / extra).rglob("*.py"))
    for p in sorted(files):
        h.update(p.relative_to(ROOT).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


@contextlib.contextmanager
def file_lock(folder: Path):
    """Hold an exclusive lock on ``folder`` (a ``.lock`` file in it) for the block: runs
    executed in parallel that need the same prepared data or the same trained model
    build it once; the others wait, then find it cached."""
    import fcntl
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_root() -> Path:
    return Path(os.environ.get(BUILD_ENV, ROOT / "build"))


def study_module(study: str):
    if study not in STUDIES:
        raise ParamsError(f"unknown study '{study}'; known: {list(STUDIES)}")
    return importlib.import_module(f"lib.studies.{study}")


@dataclass
class Run:
    """A resolved run: validated params plus where its artifacts live."""
    cfg: dict

    @property
    def study(self):
        return study_module(self.cfg["study"])

    @property
    def dir(self) -> Path:
        d = build_root() / self.cfg["study"] / "runs" / self.cfg["run"]
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def data_dir(self) -> Path:
        return build_root() / self.cfg["study"] / "data" / params_hash(self.cfg["data"])

    @property
    def train_key(self) -> str:
        """Changes with the params a model depends on *and* with the code (lib/)."""
        return params_hash({"cfg": {k: self.cfg[k] for k in ("data", "model", "loss", "train", "seed")},
                            "code": code_version(self.cfg["study"])})


def configure(study: str = "movielens", run: str = "smoke", data: dict | None = None,
              model: dict | None = None, loss: dict | None = None, train: dict | None = None,
              evaluate: dict | None = None, seed: int = 0, device: str = "cpu") -> Run:
    """Merge the given sections onto the study's defaults; unknown keys, wrong types and
    impossible values raise ``ParamsError``."""
    mod = study_module(study)
    given = {"data": data or {}, "model": model or {}, "loss": loss or {}, "train": train or {},
             "evaluate": evaluate or {}}
    cfg = merge_checked(mod.DEFAULTS, given, open_keys=getattr(mod, "OPEN_KEYS", frozenset()))
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ParamsError(f"seed must be an integer, got {seed!r}")
    if device not in ("cpu", "cuda", "auto"):
        raise ParamsError(f"device must be cpu, cuda or auto, got {device!r}")
    if not run or "/" in run:
        raise ParamsError(f"run must be a plain name, got {run!r}")
    cfg.update(study=study, run=run, seed=seed, device=device)
    mod.validate(cfg)
    return Run(cfg)


def is_up_to_date(run: Run) -> bool:
    """Whether the run's evaluation exists for these params and this code."""
    check = getattr(run.study, "is_up_to_date", None)
    return bool(check and check(run))


def prepare(run: Run):
    return run.study.prepare(run)


def train(run: Run):
    return run.study.train(run)


def evaluate(run: Run):
    return run.study.evaluate(run)


def configure_from(params_file: str | None = None, **sections) -> Run:
    """A params file if given (as ``python -m lib.run`` would run it), else the sections."""
    if params_file:
        from .run import run_parameters
        path = Path(params_file)
        if not path.is_absolute() and not path.exists():
            path = ROOT / params_file
        return Run(run_parameters(path)["_cfg"])
    return configure(**sections)


def render_report(study: str, report_file: str, output: str | None = None,
                  run_overrides: dict | None = None) -> dict:
    from .config import load_yaml
    path = Path(report_file)
    raw = load_yaml(path)
    unknown = set(raw) - {"study", "report"}
    if unknown:
        raise ParamsError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: ['study', 'report']")
    mod = study_module(raw.get("study", study))
    rcfg = mod.report_config(raw["report"])
    if output:
        rcfg["output"] = str(output)
    rcfg["run_overrides"] = run_overrides or {}
    rcfg["report_file"] = str(path.resolve())
    return mod.render_report(rcfg)


def show(result: dict) -> None:
    """Display a step's result in a notebook: tables as tables, figures as figures."""
    import pandas as pd
    try:
        from IPython.display import Markdown, display
    except ImportError:  # plain Python
        display, Markdown = print, str
    for key, value in (result or {}).items():
        if isinstance(value, pd.DataFrame):
            display(Markdown(f"**{key}**"))
            display(value)
        elif hasattr(value, "savefig"):
            display(value)
        else:
            print(f"{key}: {value}")
