"""Params files: load, validate against a study's defaults, deep-merge, hash.

A run is a params file. Its top-level keys are the notebook parameters (papermill injects
them); nested keys are checked here against the study's defaults, because papermill only
*warns* on an unknown parameter and a typo must fail the run instead.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping

import yaml


class ParamsError(ValueError):
    """A params file or value is unknown, mistyped or impossible."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (the
    plain loader keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict:
    """A params file's mapping; a missing, unparsable or empty file, a key given twice or a
    top level that is not a mapping is a ``ParamsError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        with path.open() as fh:
            data = yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        raise ParamsError(f"{path}: the file is empty (a run needs at least one section, e.g. "
                          f"'data: {{dataset: ml-1m}}'; to run every default, write 'data: {{}}')")
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _suggest(key: str, allowed) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_ok(value: Any, default: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return isinstance(value, type(default))


# Keys whose value is a free-form mapping (e.g. a baseline's hyperparameters, checked by
# the model's own constructor) are listed by dotted path in OPEN_KEYS of a study.
def merge_checked(defaults: Mapping, given: Mapping, where: str = "",
                  open_keys: frozenset[str] = frozenset(), renamed: Mapping[str, str] | None = None,
                  nullable: frozenset[str] = frozenset()) -> dict:
    """Deep-merge ``given`` onto ``defaults``; unknown keys and wrong types raise (a key in
    ``renamed``, old dotted name -> new, says what it is called now). ``null`` is a value only
    where the default is None or the dotted key is in ``nullable``."""
    out = copy.deepcopy(dict(defaults))
    for key, value in (given or {}).items():
        path = f"{where}.{key}" if where else str(key)
        if key not in defaults:
            if renamed and path in renamed:
                raise ParamsError(f"params key '{path}' was renamed '{renamed[path]}'")
            raise ParamsError(f"unknown params key '{path}'{_suggest(str(key), defaults)}; "
                              f"allowed here: {sorted(defaults)}")
        default = defaults[key]
        if path in open_keys:
            if value is not None and not isinstance(value, dict):
                raise ParamsError(f"params key '{path}' must be a mapping")
            out[key] = copy.deepcopy(value or {})
            continue
        if isinstance(default, dict) and default:
            if not isinstance(value, dict):
                raise ParamsError(f"params key '{path}' must be a mapping, got {value!r}")
            out[key] = merge_checked(default, value, path, open_keys, renamed, nullable)
            continue
        if value is None and default is not None and path not in nullable:
            raise ParamsError(f"params key '{path}' must not be null (its default is {default!r})")
        if not _type_ok(value, default):
            hint = ""
            if isinstance(default, (int, float)) and isinstance(value, str) and _is_number(value):
                hint = (f" (YAML reads {value} as a string: write it with a dot and a signed "
                        f"exponent, e.g. 1.0e-3, or as a decimal)")
            raise ParamsError(f"params key '{path}' must be of type {type(default).__name__}, "
                              f"got {value!r}{hint}")
        if isinstance(default, (list, tuple)) and default and value:
            bad = [v for v in value if not _type_ok(v, default[0])]
            if bad:
                raise ParamsError(f"params key '{path}' must be a list of {type(default[0]).__name__}, "
                                  f"got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ParamsError(f"params key '{path}' must be a finite number, got {value!r}")
        out[key] = float(value) if isinstance(default, float) and value is not None else value
    return out


def apply_renames(raw: Mapping, renamed: Mapping[str, str]) -> dict:
    """A params mapping written before keys were renamed (old dotted name -> new), in the
    new names; all renames at once, so ``a -> b`` and ``b -> c`` swap cleanly."""
    flat = {}

    def walk(node, prefix):
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping) and v and path not in renamed:
                walk(v, path)
            else:
                flat[renamed.get(path, path)] = copy.deepcopy(v)

    walk(raw, "")
    out: dict = {}
    for path, v in flat.items():
        *parents, last = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = v
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def deep_merge(base: Mapping, over: Mapping | None) -> dict:
    """``over`` merged onto ``base`` key by key (nested mappings merged, other values
    replaced); neither input is modified. No validation: see ``merge_checked``."""
    out = copy.deepcopy(dict(base))
    for key, value in (over or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def params_hash(obj: Any, n: int = 12) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


def require(cond: bool, message: str) -> None:
    if not cond:
        raise ParamsError(message)
