"""A study's params schema, declared once with pydantic: every key's type, default, range,
allowed values and nullability (the fields of one model per section), and the rules
between keys (model validators). A study's ``DEFAULTS`` are its schema's defaults
(``defaults``); validating a run, and so ``python -m lib.run --check``, is validating its
sections against the schema (``check``), whose first error becomes a ``ParamsError`` that
names the dotted key, what it must be and what it got.

Unknown keys (with a did-you-mean suggestion), renamed keys and the merge onto the defaults
stay with ``lib.core.params.merge_checked``, which reads them off these defaults.
"""
from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .params import ParamsError


class Section(BaseModel):
    """A params section: unknown keys are errors; values are taken as written (no string to
    number coercion: an unquoted ``1e-3`` that YAML reads as text is an error, with a hint
    from ``merge_checked``), except that an integer is a valid float."""
    model_config = ConfigDict(extra="forbid", strict=True)


def defaults(schema: type[BaseModel]) -> dict:
    """Every key's default, as the nested dict a params file's sections merge onto."""
    return schema().model_dump()


def _walk(schema: type[BaseModel], prefix: str = ""):
    """(dotted key, field) of every field, nested sections included."""
    for name, field in schema.model_fields.items():
        dotted = f"{prefix}{name}"
        yield dotted, field
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            yield from _walk(sub, f"{dotted}.")


def open_keys(schema: type[BaseModel]) -> frozenset[str]:
    """Keys whose value is a free mapping (default ``{}``; checked by a model validator)."""
    return frozenset(k for k, f in _walk(schema) if f.default == {} and getattr(f.annotation, "__origin__", None) is dict)


def nullable_keys(schema: type[BaseModel]) -> frozenset[str]:
    """Keys that take ``null`` although their default is a value (``X | None = value``)."""
    return frozenset(k for k, f in _walk(schema)
                     if f.default is not None and type(None) in getattr(f.annotation, "__args__", ()))


_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}
_TYPES = {"int_type": "int", "int_from_float": "int", "float_type": "float", "bool_type": "bool",
          "string_type": "str", "list_type": "list", "dict_type": "mapping", "model_type": "mapping",
          "tuple_type": "list", "none_required": "null"}


def message(error: dict, schema: type[BaseModel] | None = None) -> str:
    """One pydantic error in this project's words: the dotted key, the rule, the value."""
    loc = ".".join(str(p) for p in error["loc"] if not isinstance(p, int))
    got = error.get("input")
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "value_error":  # a rule of a model validator: its message names its keys
        return str(ctx.get("error", error["msg"])).removeprefix("Value error, ")
    if kind in _BOUNDS:
        name, sign = _BOUNDS[kind]
        bound = ctx[name]
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"{loc} must be {sign} {bound}, got {got!r}"
    if kind == "missing":
        return f"{loc} is required"
    if kind == "literal_error":
        return f"{loc}: unknown {got!r}; known: {ctx.get('expected')}"
    if kind in ("too_short", "too_long"):
        return f"{loc} must have {error['msg'].split('have ', 1)[-1].split(' after')[0]}, got {got!r}"
    if kind == "extra_forbidden":
        *parent, key = error["loc"]
        allowed = _fields(schema, parent) if schema is not None else []
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown params key '{loc}'{hint}; allowed here: {sorted(allowed)}"
    if kind in _TYPES:
        return f"params key '{loc}' must be of type {_TYPES[kind]}, got {got!r}"
    return f"{loc}: {error['msg']}, got {got!r}"


def _fields(schema: type[BaseModel], path: list) -> list[str]:
    model: Any = schema
    for part in path:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)),
                     None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def check(schema: type[BaseModel], cfg: dict) -> BaseModel:
    """``cfg`` (the sections ``schema`` has) validated against it; the first error (an
    unknown key before the others) is a ``ParamsError`` (see ``message``)."""
    try:
        return schema.model_validate({k: cfg[k] for k in schema.model_fields if k in cfg})
    except ValidationError as exc:
        errors = exc.errors()
        # a misspelt key comes first: the key it was meant to be is then "missing" too
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        raise ParamsError(message(first, schema)) from None
