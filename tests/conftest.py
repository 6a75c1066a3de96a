import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("TWOTOWER_DATA_ROOT", ROOT.parent / "shared" / "data"))


TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items):
    """Every test gets exactly one tier: ``e2e`` if marked so (notebook runs collected by
    nbmake are e2e), ``integration`` if it reads the real data (the ``shared_data``
    fixture), else ``unit``."""
    for item in items:
        names = {m.name for m in item.iter_markers()}
        if str(getattr(item, "path", "")).endswith(".ipynb"):
            names.add("e2e")
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.slow)
        if "e2e" in names:
            continue
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
        elif "integration" not in names:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _isolated_build(tmp_path_factory, monkeypatch):
    """Every test writes its artifacts into its own temporary build folder."""
    monkeypatch.setenv("TWOTOWER_BUILD_DIR", str(tmp_path_factory.mktemp("build")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "ml-1m" / "ratings.dat").is_file():
        pytest.skip(f"MovieLens data not found under {SHARED} (set TWOTOWER_DATA_ROOT)")
    return SHARED


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    from lib.movielens import data
    src = data.write_synthetic_ml1m(tmp_path_factory.mktemp("syn"), n_users=120, n_items=80,
                                    n_ratings=4000, seed=1)
    return data.prepare(data.parse_ml1m(src, verify=False))
