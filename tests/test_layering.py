"""The layering of lib/ (.importlinter): CLI over studies over core, the core knows no
study, each study's modules layered, and no import cycle in any package."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.unit


def _lint(cwd: Path, config: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(cwd))
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", "--config", str(config), "--no-cache"],
                          cwd=cwd, env=env, capture_output=True, text=True)


def test_layering_contracts_are_kept():
    proc = _lint(ROOT, ROOT / ".importlinter")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_the_checker_catches_a_cycle(tmp_path):
    """The acyclic contract is live: a planted cycle (one import inside a function) breaks it."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    cfg = tmp_path / ".importlinter"
    cfg.write_text("[importlinter]\nroot_package = pkg\n\n[importlinter:contract:acyclic]\nname = no cycles\n"
                   "type = acyclic_siblings\nancestors =\n    pkg\n")
    proc = _lint(tmp_path, cfg)
    assert proc.returncode == 1 and "1 broken" in proc.stdout, proc.stdout + proc.stderr
