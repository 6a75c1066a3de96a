"""The study registry. The core knows studies by name only: each is a package
``lib.<study>`` with the same inner shape, and the core imports its ``steps`` or ``report``
module when a run asks for it (never at import time, so nothing in ``lib.core`` depends on
a study).

A study's ``steps`` module provides:
- ``SCHEMA``: its params schema (``lib.core.schema``: pydantic, one model per section
  ``data``, ``model``, ``loss``, ``train``, ``evaluate``), every key declared once;
- ``DEFAULTS``: every key's default, the schema's (an unknown key in a params file is an error);
- ``OPEN_KEYS``: dotted keys whose value is a free mapping (checked by the model itself);
- ``KEY_CODE``: the source files whose change invalidates cached results;
- ``TRAIN_EVALUATE_KEYS``: the ``evaluate`` keys training depends on (per-epoch evaluation);
- optionally ``data_key_extra(cfg)``: what else prepared data depends on (a mapping);
- optionally ``RENAMED_KEYS``: old dotted params key -> its new name; ``NULLABLE_KEYS``:
  dotted keys that take ``null`` although their default is not None;
- ``validate(cfg)``: raise ``ParamsError`` on an impossible value (the schema's check);
- ``prepare(run)``, ``train(run)``, ``evaluate(run)``: the cached steps the notebooks call.
Its ``report`` module provides ``report_config(raw)`` (with ``runs``, the params files to
execute, and optional ``derived_runs``, ``(file, overrides)`` pairs) and ``render_report(rcfg)``;
optionally ``dataset_report_config(raw, path)`` for report files with a ``data`` section,
and ``expected_cost(cfg)``: a run's rough cost from its resolved params (about seconds on
one CPU thread), by which runs in parallel start the longest first and the time left is told.
Its ``views`` module is what the notebooks show of a run, each function taking a ``Run``
and returning named results for ``lib.core.pipeline.show``: ``data_overview``,
``model_overview``, ``training_batch``, ``training_curves``, ``metrics_overview``,
``retrieval_check``, ``example_query``, and ``report_overview(result)`` (the result of ``render_report``).
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .params import ParamsError

STUDIES = ("movielens", "wikiseq")
# The study a report on a user's own data runs (params/<name>/report.yaml with a data section):
# the evaluation of two-tower retrievers against baselines on an interactions log.
DATASET_STUDY = "movielens"


def _module(study: str, part: str) -> ModuleType:
    if study not in STUDIES:
        raise ParamsError(f"unknown study '{study}'; known: {list(STUDIES)}")
    return importlib.import_module(f"lib.{study}.{part}")


def steps(study: str) -> ModuleType:
    """The study's ``lib.<study>.steps`` module (defaults, validation, cached steps)."""
    return _module(study, "steps")


def report(study: str) -> ModuleType:
    """The study's ``lib.<study>.report`` module (report config and rendering)."""
    return _module(study, "report")


def views(study: str) -> ModuleType:
    """The study's ``lib.<study>.views`` module (what the notebooks show of a run)."""
    return _module(study, "views")
