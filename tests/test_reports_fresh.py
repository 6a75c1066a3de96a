"""The committed reports were rendered from the params files as they are now.

A params file counts as unchanged if its bytes hash to what the report's provenance
records, or if the version with that hash in git history says the same under the study's
documented key renames (``RENAMED_KEYS`` in ``lib/<study>/steps.py``: the report's figures
come from the same configuration, under older key names). If this fails, a params file
changed after the report was rendered: run `make report`.
"""
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from lib.core import studies
from lib.core.params import apply_renames

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ["reports/EVALUATION_REPORT.json", "reports/TWO_TOWER_V1_V2_COMPARISON.json"]
pytestmark = pytest.mark.unit


def _sha(data: bytes, n: int) -> str:
    return hashlib.sha256(data).hexdigest()[:n]


def _recorded_version(rel: str, digest: str) -> bytes | None:
    """The committed content of ``rel`` whose sha256 starts with ``digest``, from git history."""
    commits = subprocess.run(["git", "log", "--format=%H", "--", rel], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    for commit in commits + [f"{c}~1" for c in commits]:
        blob = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=ROOT, capture_output=True)
        if blob.returncode == 0 and _sha(blob.stdout, len(digest)) == digest:
            return blob.stdout
    return None


def _same_under_renames(rel: str, digest: str) -> bool:
    old = _recorded_version(rel, digest)
    study = Path(rel).parent.name
    renamed = getattr(studies.steps(study), "RENAMED_KEYS", None) if study in studies.STUDIES else None
    if old is None or not renamed:
        return False
    return apply_renames(yaml.safe_load(old), renamed) == yaml.safe_load((ROOT / rel).read_text())


@pytest.mark.parametrize("companion", REPORTS)
def test_committed_report_matches_params(companion):
    path = ROOT / companion
    if not path.is_file():
        pytest.skip(f"{companion} not rendered yet")
    prov = json.loads(path.read_text())["provenance"]
    stale = []
    for rel, digest in prov["params"].items():
        f = ROOT / rel
        if not f.is_file():
            stale.append(f"{rel} (deleted)")
        elif _sha(f.read_bytes(), len(digest)) != digest and not _same_under_renames(rel, digest):
            stale.append(rel)
    assert not stale, f"{companion} is stale for {stale}: run `make report`"
    md = path.with_suffix(".md").read_text()
    assert "{{" not in md and "Smoke render" not in md


def test_a_changed_value_is_stale_even_under_renames(tmp_path):
    """The rename check is no blanket pass: a value that differs is a difference."""
    renamed = studies.steps("wikiseq").RENAMED_KEYS
    old = {"train": {"epochs": 20, "lr": 2.0e-5, "accum_steps": 8}}
    assert apply_renames(old, renamed) == {"train": {"max_epochs": 20, "learning_rate": 2.0e-5, "accum_steps": 8}}
    assert apply_renames(old, renamed) != {"train": {"max_epochs": 20, "learning_rate": 1.0e-3, "accum_steps": 8}}
