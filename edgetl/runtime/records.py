"""Typed records between the stages: frozen dataclasses written as JSON and read back checked.

Every file one stage leaves for another (a run's stage records, a bundle's manifest, a device's
measurement) is one `Record` subclass. `to_dict()` is what is written; `from_dict()` reads it
back, refusing an unknown `schema_version`, a missing or unknown key, or a value of the wrong
type, with the key named, so a damaged file is one line and never a KeyError deep in a stage.
Nested records, tuples and `dict[str, Record]` are converted by the field types.

A record also reads like the JSON it is written as (`record["float_layers"] == []`,
`record.get("test")`): by key, a value is what the file holds (lists and dicts); by attribute,
it is typed (tuples and nested records).
Standard library only: the device reads manifests and writes measurements with it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from functools import cache
from pathlib import Path, PurePath
from typing import Any, ClassVar, TypeVar, Union

from edgetl.errors import RecordError

R = TypeVar("R", bound="Record")


class Record(Mapping):
    """Base of every record; subclasses are declared `@record` (a frozen dataclass).

    `SCHEMA_VERSIONS` lists the versions this edgetl reads (the first is what it writes); a
    record without a `schema_version` field has none. `OPTIONAL_KEYS` may be absent when read
    (files written before the key existed) and take the field's default."""

    SCHEMA_VERSIONS: ClassVar[tuple[int, ...]] = (1,)
    OPTIONAL_KEYS: ClassVar[frozenset[str]] = frozenset()

    # -- reading like the JSON it is --------------------------------------------------------
    def __getitem__(self, key: str):
        attr = _attrs(type(self)).get(key)
        if attr is None:
            raise KeyError(key)
        return _plain(getattr(self, attr))  # the JSON's value: lists, dicts

    def __iter__(self):
        return iter(_names(type(self)))

    def __len__(self) -> int:
        return len(_names(type(self)))

    # -- writing and reading ------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The record as JSON-ready data: nested records as dicts, tuples as lists, paths as str."""
        return _plain(self)

    def to_json(self, *, indent: int | None = 2, sort_keys: bool = False) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=sort_keys)

    @classmethod
    def from_dict(cls: type[R], raw: Any, where: str = "") -> R:
        """`raw` (parsed JSON) as this record; `RecordError` naming the first key that does not fit."""
        return _from_dict(cls, raw, where)

    @classmethod
    def from_json(cls: type[R], text: str | bytes, where: str = "") -> R:
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RecordError(f"{where or cls.__name__}: not valid JSON ({str(exc).splitlines()[0]})") from None
        return cls.from_dict(raw, where)

    @classmethod
    def read(cls: type[R], path: str | Path) -> R:
        """The record in file `path` (`RecordError` naming the file and the key)."""
        path = Path(path)
        return cls.from_json(path.read_bytes(), str(path))

    def write(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")


def record(cls):
    """`@dataclass(frozen=True)` for a `Record` subclass, which is also equal to the JSON object it
    is written as (`QuantizeRecord(...) == json.loads(quantize.json)`)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    same = cls.__eq__

    def __eq__(self, other):
        if isinstance(other, dict):
            return self.to_dict() == other
        return same(self, other)

    cls.__eq__ = __eq__
    return cls


def _from_dict(cls, raw, where: str):
    """Any dataclass `cls` from a JSON object (a Record, or a plain dataclass nested in one)."""
    if not isinstance(raw, dict):
        raise RecordError(f"{where or cls.__name__}: expected a JSON object, found {type(raw).__name__}")
    names = _names(cls)
    optional = getattr(cls, "OPTIONAL_KEYS", frozenset())
    if "schema_version" in names:
        versions = getattr(cls, "SCHEMA_VERSIONS", (1,))
        version = raw.get("schema_version", versions[0] if "schema_version" in optional else None)
        if version not in versions:
            raise RecordError(f"{_at(where, 'schema_version')}: unknown version {version!r} "
                              f"(this edgetl reads {', '.join(map(str, versions))})")
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise RecordError(f"{_at(where, unknown[0])}: unknown key (known: {', '.join(names)})")
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        key = f.metadata.get("key", f.name)
        if key not in raw:
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if key in optional and has_default:
                continue
            raise RecordError(f"{_at(where, key)}: missing")
        values[f.name] = _convert(hints[f.name], raw[key], _at(where, key))
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # the record's own checks (__post_init__)
        raise RecordError(f"{where or cls.__name__}: {exc}") from None


def _at(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


@cache
def _names(cls) -> tuple[str, ...]:
    """The JSON keys of a dataclass: its field names, or a field's `metadata["key"]` (e.g. "from")."""
    return tuple(f.metadata.get("key", f.name) for f in dataclasses.fields(cls))


@cache
def _attrs(cls) -> dict[str, str]:
    return {f.metadata.get("key", f.name): f.name for f in dataclasses.fields(cls)}


@cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.metadata.get("key", f.name): _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, PurePath):
        return str(value)
    return value


_NUMBER = {float: (int, float), int: (int,), str: (str,), bool: (bool,)}


def _convert(tp, value, where: str):
    """`value` (from JSON) as type `tp`, checked; records, tuples and dicts converted inside."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        arms = typing.get_args(tp)
        if value is None:
            if type(None) in arms:
                return None
            raise RecordError(f"{where}: missing (null)")
        errors = []
        for arm in (a for a in arms if a is not type(None)):
            try:
                return _convert(arm, value, where)
            except RecordError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise RecordError(f"{where}: {value!r} is not one of {', '.join(map(repr, typing.get_args(tp)))}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise RecordError(f"{where}: expected a list, found {type(value).__name__}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, _at(where, i)) for i, v in enumerate(value))
        if len(args) != len(value):
            raise RecordError(f"{where}: expected {len(args)} values, found {len(value)}")
        return tuple(_convert(a, v, _at(where, i)) for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected a JSON object, found {type(value).__name__}")
        args = typing.get_args(tp)
        if not args:
            return value
        return {k: _convert(args[1], v, _at(where, k)) for k, v in value.items()}
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise RecordError(f"{where}: expected a list, found {type(value).__name__}")
        args = typing.get_args(tp)
        return [_convert(args[0], v, _at(where, i)) for i, v in enumerate(value)] if args else value
    if tp is Path:
        if not isinstance(value, str):
            raise RecordError(f"{where}: expected a path, found {type(value).__name__}")
        return Path(value)
    if tp in _NUMBER:
        ok = isinstance(value, _NUMBER[tp]) and (tp is bool or not isinstance(value, bool))
        if not ok:
            raise RecordError(f"{where}: expected {'a number' if tp is float else tp.__name__}, "
                              f"found {type(value).__name__} {value!r}"[:200])
        return float(value) if tp is float else value
    return value
