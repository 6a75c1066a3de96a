"""A run: a params file resolved against its study's defaults, and where its artifacts live.

Every step is cached on disk under a key: the hash of the params it depends on and of the
code that computes it (the study's ``KEY_CODE``, read once per process, so an edit made while
a run is going neither splits the run across two keys nor labels its results with code it
did not run). Layout under ``build/<study>/`` (``$TWOTOWER_BUILD_DIR`` moves it):
``data/<data key>/`` prepared data, ``models/<train key>/`` a trained model (shared by runs
that differ only in evaluation), ``runs/<run>/`` a run's executed notebooks and metrics.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from . import studies
from .device import DEVICES
from .params import ParamsError, deep_merge, load_yaml, merge_checked, params_hash

ROOT = Path(__file__).resolve().parents[2]
BUILD_ENV = "TWOTOWER_BUILD_DIR"
SECTIONS = ("data", "model", "loss", "train", "evaluate")
TOP_LEVEL = ("study", "run", *SECTIONS, "seed", "device")


def build_root() -> Path:
    return Path(os.environ.get(BUILD_ENV, ROOT / "build"))


@functools.lru_cache(maxsize=None)
def code_version(study: str) -> str:
    """Hash of the files in the study's ``KEY_CODE`` (what computes results: not the report
    layout, the CLI or params checking), read once per process."""
    h = hashlib.sha256()
    for rel in sorted(studies.steps(study).KEY_CODE):
        h.update(rel.encode())
        h.update((ROOT / rel).read_bytes())
    return h.hexdigest()[:12]


@dataclass
class Run:
    """A resolved run: validated params (``cfg``) plus where its artifacts live."""
    cfg: dict

    @property
    def study(self) -> str:
        return self.cfg["study"]

    @property
    def steps(self):
        return studies.steps(self.study)

    @property
    def dir(self) -> Path:
        d = build_root() / self.study / "runs" / self.cfg["run"]
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def data_dir(self) -> Path:
        return build_root() / self.study / "data" / self.data_key

    @property
    def model_dir(self) -> Path:
        return build_root() / self.study / "models" / self.train_key

    @property
    def data_key(self) -> str:
        """Changes with the ``data`` section (plus what the study's ``data_key_extra`` adds)
        and with the code."""
        extra = getattr(self.steps, "data_key_extra", lambda cfg: {})(self.cfg)
        return params_hash({"data": self.cfg["data"], **extra, "code": code_version(self.study)})

    @property
    def train_key(self) -> str:
        """Changes with the params a model depends on, the prepared data (its key) and the code."""
        extra = {k: self.cfg["evaluate"][k] for k in getattr(self.steps, "TRAIN_EVALUATE_KEYS", ())}
        return params_hash({"cfg": {k: self.cfg[k] for k in ("model", "loss", "train", "seed")},
                            "data": self.data_key, "evaluate": extra, "code": code_version(self.study)})

    @property
    def metrics_key(self) -> str:
        """Changes with any params value (evaluation settings and device included), with the
        model (its train key, which follows the prepared data) and the code."""
        return params_hash({"cfg": self.cfg, "train": self.train_key, "code": code_version(self.study)})

    def is_up_to_date(self) -> bool:
        """Whether the run's evaluation exists for these params and this code."""
        from .files import read_json
        return (read_json(self.dir / "metrics.json") or {}).get("key") == self.metrics_key


def configure(study: str = "movielens", run: str = "smoke", data: dict | None = None,
              model: dict | None = None, loss: dict | None = None, train: dict | None = None,
              evaluate: dict | None = None, seed: int = 0, device: str = "cpu") -> Run:
    """Merge the given sections onto the study's defaults; unknown keys, wrong types and
    impossible values raise ``ParamsError``."""
    mod = studies.steps(study)
    given = {"data": data or {}, "model": model or {}, "loss": loss or {}, "train": train or {},
             "evaluate": evaluate or {}}
    cfg = merge_checked(mod.DEFAULTS, given, open_keys=getattr(mod, "OPEN_KEYS", frozenset()),
                        renamed=getattr(mod, "RENAMED_KEYS", None), nullable=getattr(mod, "NULLABLE_KEYS", frozenset()))
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ParamsError(f"seed must be an integer >= 0, got {seed!r}")
    if device not in DEVICES:
        raise ParamsError(f"device must be one of {list(DEVICES)}, got {device!r}")
    if device == "cuda":
        from .device import pick_device
        pick_device(device)  # no GPU: fail now, not when training starts
    if not run or "/" in run:
        raise ParamsError(f"run must be a plain name, got {run!r}")
    cfg.update(study=study, run=run, seed=seed, device=device)
    mod.validate(cfg)
    return Run(cfg)


def resolve_path(path: str | Path) -> Path:
    """A params path as given, or relative to the repository root (notebooks run in
    ``notebooks/``)."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else ROOT / p


def run_parameters(path: str | Path, overrides: dict | None = None) -> dict:
    """The notebook parameters of a run params file: every section present (an omitted
    section means the study defaults, never the notebook's smoke values), validated.
    ``overrides``: sections merged over the file's, ``seed``/``device`` replacing its
    values. The run is named by ``run_name``."""
    path = resolve_path(path)
    raw = load_yaml(path)
    if is_report_file(path, raw):
        raise ParamsError(f"{path} is a report file: run it with --report {path} (make report REPORT={path})")
    study = raw.get("study", path.parent.name)
    for section in SECTIONS:
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise ParamsError(f"{path}: section '{section}' must be a mapping (e.g. '{section}: {{key: value}}'), "
                              f"got {raw[section]!r}")
    unknown = set(raw) - (set(TOP_LEVEL) - {"run"})  # a run is named by its file
    if unknown:
        raise ParamsError(f"{path}: unknown top-level key(s) {sorted(unknown)}; "
                          f"allowed: {[k for k in TOP_LEVEL if k != 'run']}")
    if study not in studies.STUDIES:
        where = "its 'study:' key" if "study" in raw else f"the folder it is in ('{path.parent.name}'; or set 'study:')"
        raise ParamsError(f"{path}: unknown study '{study}', from {where}; known: {list(studies.STUDIES)}")
    ov = overrides or {}
    if "device" in ov and ov["device"] == raw.get("device", "cpu"):
        # a device override that restates the file's (``make report DEVICE=cpu``) is the same run
        ov = {k: v for k, v in ov.items() if k != "device"}
    unknown = set(ov) - set(SECTIONS) - {"seed", "device"}
    if unknown:
        raise ParamsError(f"overrides: unknown key(s) {sorted(unknown)}; allowed: {[*SECTIONS, 'seed', 'device']}")
    params = {"study": study, "run": run_name(path, study, ov),
              "seed": ov.get("seed", raw.get("seed", 0)), "device": ov.get("device", raw.get("device", "cpu"))}
    for section in SECTIONS:
        params[section] = deep_merge(raw.get(section) or {}, ov.get(section) or {})
    _absolute_paths(params)
    configure(**params)  # raises ParamsError on any unknown/mistyped/impossible value
    return params


def run_name(path: Path, study: str, overrides: dict | None = None) -> str:
    """A run's name, which is its folder: the file's stem for a file in ``params/<study>/``,
    else the stem and a hash of the file's path (two files of one name in different folders
    never share a run folder): relative to the repository for a file in it, so that every
    clone names its runs alike (and its reports quote the same names), else absolute;
    overrides add a hash of themselves."""
    path = Path(path).resolve()
    name = path.stem
    if path.parent != (ROOT / "params" / study).resolve():
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        name += "-" + hashlib.sha256(where.as_posix().encode()).hexdigest()[:6]
    return f"{name}-{params_hash(overrides, 6)}" if overrides else name


def path_base() -> Path:
    """What a relative path in params means: relative to the folder the user runs from (in
    a notebook, whose kernel runs in ``notebooks/``, the repository root)."""
    cwd = Path.cwd().resolve()
    return ROOT if cwd == (ROOT / "notebooks").resolve() else cwd


PATH_KEYS = ("data.path",)  # params keys that name a file or folder, in every study (a study adds its own)


def _absolute_paths(params: dict) -> None:
    """Resolve relative paths (``PATH_KEYS`` and the study's) once, here, before any notebook
    kernel (which runs in another folder) reads them."""
    keys = dict.fromkeys((*PATH_KEYS, *getattr(studies.steps(params["study"]), "PATH_KEYS", ())))
    for dotted in keys:
        *parents, key = dotted.split(".")
        node = params
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(key) if isinstance(node, dict) else None
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            node[key] = str(path_base() / value)


def run_from_file(path: str | Path, overrides: dict | None = None) -> Run:
    """The ``Run`` of a params file (plus overrides), as ``python -m lib.run`` runs it."""
    return configure(**run_parameters(path, overrides))


REPORT_FILE_NAME = "report.yaml"


def is_report_file(path: str | Path, raw: dict) -> bool:
    """A report file (rather than a run file): named ``report.yaml``, or with a ``report``
    or ``models`` section."""
    return Path(path).name == REPORT_FILE_NAME or "report" in raw or "models" in raw


def read_report_file(path: str | Path, study: str | None = None) -> tuple[str, dict]:
    """A report file's study (its ``study:`` key, else ``study``, else its folder's name)
    and its validated ``report`` section (the study's ``report_config``, with ``runs`` and
    ``derived_runs``). A file with a ``data`` section is a report on that dataset (the
    study's ``dataset_report_config``; the study defaults to ``studies.DATASET_STUDY``)."""
    path = resolve_path(path)
    raw = load_yaml(path)
    if "data" in raw:  # a report on one dataset: a study's standard models on this data section
        in_folder = path.parent.name if path.parent.name in studies.STUDIES else None
        study = raw.get("study") or study or in_folder or studies.DATASET_STUDY
        mod = studies.report(study)
        if not hasattr(mod, "dataset_report_config"):
            raise ParamsError(f"{path}: study '{study}' has no dataset reports (a 'data' section); "
                              f"'{studies.DATASET_STUDY}' has")
        return study, mod.dataset_report_config(raw, path)
    unknown = set(raw) - {"study", "report"}
    if unknown:
        raise ParamsError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: ['study', 'report']")
    if not raw.get("report"):
        raise ParamsError(f"{path}: a report file needs a 'report' section")
    study = raw.get("study") or study or path.parent.name
    if study not in studies.STUDIES:
        raise ParamsError(f"{path}: unknown study '{study}'; known: {list(studies.STUDIES)}")
    return study, studies.report(study).report_config(raw["report"])


def report_runs(path: str | Path) -> tuple[str, dict, list]:
    """A report file's study, its config and the runs it executes (params files and
    ``(file, overrides)`` pairs), every one validated; two runs that would share one run
    folder are an error."""
    study, rcfg = read_report_file(path)
    items = [ROOT / p for p in rcfg["runs"]] + [(ROOT / p, ov) for p, ov in rcfg.get("derived_runs", [])]
    names = {}
    for item in items:
        run_file, ov = item if isinstance(item, tuple) else (item, None)
        name = run_parameters(run_file, ov)["run"]
        if name in names and names[name] != (Path(run_file).resolve(), ov):
            raise ParamsError(f"{run_file} and {names[name][0]} would share the run folder '{name}'")
        names[name] = (Path(run_file).resolve(), ov)
    return study, rcfg, items
