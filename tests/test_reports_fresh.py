"""The committed reports were rendered from the params files as they are now.

If this fails, a params file changed after the report was rendered: run `make report`.
"""
import hashlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ["reports/EVALUATION_REPORT.json", "reports/TWO_TOWER_V1_V2_COMPARISON.json"]


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
        elif hashlib.sha256(f.read_bytes()).hexdigest()[:len(digest)] != digest:
            stale.append(rel)
    assert not stale, f"{companion} is stale for {stale}: run `make report`"
    md = path.with_suffix(".md").read_text()
    assert "{{" not in md and "Smoke render" not in md
