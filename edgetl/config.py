"""One validator for config files: a TOML table checked against the frozen dataclass it becomes.

The dataclass's annotations are the schema (a `Literal` lists the values allowed); pydantic does
the checking, and its first complaint becomes one `ConfigError` naming the file, the dotted key
and the keys or values allowed. Rules between keys stay with the caller, after `parse`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import pydantic
from pydantic import AfterValidator, ConfigDict, Field, ValidationError

from edgetl.errors import ConfigError

T = TypeVar("T")
# A table holds only its dataclass's fields, and no value is converted: "22" is not a port, 1 is not true.
SCHEMA = ConfigDict(extra="forbid", strict=True)
UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")
WHAT = {bool: "a bool", int: "a int", float: "a number", str: "a string"}


def _distinct(values: tuple) -> tuple:
    if len(set(values)) != len(values):
        raise ValueError("a value is listed twice")
    return values


# A non-empty list of distinct values, in the file's order: `Choices[Literal["fp32", "int8"]]`.
Choices = Annotated[tuple[T, ...], Field(min_length=1), AfterValidator(_distinct)]
NonNegative = Annotated[float, Field(ge=0)]


def bad(file: Path | str, key: str, got, allowed) -> ConfigError:
    """`{file}: {key} = {got!r} is not allowed (hint: allowed: ...)`: the one shape of a bad value."""
    allowed = ", ".join(map(str, allowed)) if isinstance(allowed, tuple | list | set | dict) else allowed
    return ConfigError(f"{file}: {key} = {got!r} is not allowed", f"allowed: {allowed}")


def parse(cls: type[T], raw: dict, file: Path | str, *, at: str = "", given: dict | None = None) -> T:
    """`raw`, a table of `file` (at dotted key `at`, "" for the whole file), as a `cls`, every key and
    value checked. `given` sets the fields that are not the file's to say (a target's `file`)."""
    given = given or {}
    if clash := sorted(raw.keys() & given.keys()):
        raise _unknown(file, _dotted(at, clash[:1]), raw[clash[0]], _keys(cls, given))
    try:
        return _adapter(cls).validate_json(json.dumps({"table": {**raw, **given}}, default=str)).table
    except ValidationError as exc:
        raise _error(exc, cls, raw, file, at, given) from None


@functools.cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    # In Python mode strict pydantic wants an instance for a dataclass; from JSON it takes a table and
    # is as strict about the rest. TOML's values are JSON's plus dates, which (and `given` paths) go in as text.
    return pydantic.TypeAdapter(pydantic.create_model(f"{cls.__name__}Table", __config__=SCHEMA, table=(cls, ...)))


def _error(exc: ValidationError, cls: type, raw: dict, file, at: str, given: dict) -> ConfigError:
    """The first complaint, unknown keys before missing ones before bad values (each in file order)."""
    error = min(exc.errors(), key=lambda e: 0 if e["type"] in UNKNOWN else 1 if e["type"] == "missing" else 2)
    path = [p for p in error["loc"][1:] if isinstance(p, str)]  # list indices dropped: the key is the list
    key = _dotted(at, path)
    owner = _bare(_field_type(cls, path[:-1]))[0]
    if error["type"] in UNKNOWN:
        return _unknown(file, key, _value(raw, path), _keys(owner, given if len(path) == 1 else {}))
    if error["type"] == "missing":
        table = _dotted(at, path[:-1])
        needed = [f.name for f in dataclasses.fields(owner) if f.name not in given and _required(f)]
        others = [f.name for f in dataclasses.fields(owner) if f.name not in given and not _required(f)]
        return ConfigError(f"{file}: [{table}] lacks {path[-1]!r}" if table else f"{file}: missing key {path[-1]!r}",
                           f"required: {', '.join(needed)}" + (f"; optional: {', '.join(others)}" if others else ""))
    hint, got = _field_type(cls, path), _value(raw, path)
    if choices := _literals(hint):
        why = f" ({error['ctx']['error']})" if error["type"] == "value_error" else ""
        return ConfigError(f"{file}: {key} = {got!r} is not allowed{why}", f"allowed: {', '.join(choices)}")
    what = _what(hint, path[-1])
    default = {f.name: f.default for f in dataclasses.fields(owner)}.get(path[-1])
    example = f", as in {path[-1]} = {json.dumps(default)}" if isinstance(default, str | int | float) else ""
    return ConfigError(f"{file}: {key} = {got!r} is not allowed: {key} must be {what}", f"allowed: {what}{example}")


def _unknown(file, key: str, got, keys: list[str]) -> ConfigError:
    return ConfigError(f"{file}: {key} = {got!r} is not allowed: unknown key {key!r}", f"allowed: {', '.join(keys)}")


def _dotted(at: str, path: list[str]) -> str:
    return ".".join([at, *path] if at else path)


def _keys(cls: type, given: dict) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(cls) if f.name not in given)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _value(raw: dict, path: list[str]):
    for name in path:
        raw = raw[name]
    return raw


def _field_type(cls: type, path: list[str]):
    """The annotation of the field at `path` (dataclass fields, one level per key)."""
    hint = cls
    for name in path:
        hint = typing.get_type_hints(_bare(hint)[0], include_extras=True)[name]
    return hint


def _bare(hint) -> tuple[object, list]:
    """`hint` without Annotated and `| None`, and the Annotated metadata it had."""
    meta = []
    while True:
        if typing.get_origin(hint) is Annotated:
            hint, *more = typing.get_args(hint)
            meta += more
        elif typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        else:
            return hint, meta


def _literals(hint) -> tuple:
    hint = _bare(hint)[0]
    if typing.get_origin(hint) is tuple:
        hint = _bare(typing.get_args(hint)[0])[0]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def _what(hint, name: str) -> str:
    """What a value of `hint` is, in words: `a number >= 0`, `a list of strings`, `a [ssh] table`."""
    hint, meta = _bare(hint)
    if dataclasses.is_dataclass(hint) or hint is dict or typing.get_origin(hint) is dict:
        return f"a [{name}] table"
    if typing.get_origin(hint) is tuple:
        return "a list of strings" if _bare(typing.get_args(hint)[0])[0] is str else "a list"
    what = WHAT.get(hint, getattr(hint, "__name__", str(hint)))
    for m in (m for info in meta for m in getattr(info, "metadata", [])):
        if getattr(m, "ge", None) is not None:
            what += f" >= {m.ge:g}"
    return what
