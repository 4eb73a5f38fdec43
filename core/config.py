"""Frozen, keyword-only configuration dataclasses loaded from TOML, with validation.

A run is fully described by one TOML file. ``load_config(cls, path)`` reads it into the
dataclass ``cls`` (nested dataclasses for TOML tables), refusing unknown keys and values of
the wrong type with a :class:`ConfigError` that names the file, the dotted key and the
value. Each dataclass validates the meaning of its own values in ``__post_init__`` with
:func:`require`, so a config built in Python is checked the same way as one read from disk.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def require(condition: bool, key: str, value: Any, expected: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` and ``value`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"{key} = {value!r}: {expected}")


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r}: expected a table")
        return from_mapping(tp, value, prefix=key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key} = {value!r}: {errors}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        require(value in choices, key, value, f"expected one of {list(choices)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} = {value!r}: expected a list")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        items = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} = {value!r}: expected a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r}: expected an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r}: expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r}: expected a string")
        return value
    return value


def from_mapping(cls: type[T], data: dict[str, Any], prefix: str = "",
                 base: T | None = None) -> T:
    """Build dataclass ``cls`` from a (nested) mapping, checking keys and types.

    Keys missing from ``data`` keep their values in ``base`` (default: the field defaults).
    A table for a field whose default is a dataclass instance changes only the keys it
    names: ``[analysis.sampler] num_steps = 6`` keeps the other settings of the run
    config's default sampler, not those of the sampler class."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    dotted = (prefix + ".") if prefix else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {dotted}{unknown[0]!s}; expected one of {sorted(fields)}"
        )
    kwargs = {}
    for name, field in fields.items():
        if name not in data:
            no_default = field.default is dataclasses.MISSING
            if base is None and no_default and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing key {dotted}{name}")
            continue
        inner = getattr(base, name) if base is not None else field.default
        if (isinstance(data[name], dict) and dataclasses.is_dataclass(inner)
                and not isinstance(inner, type)):
            kwargs[name] = from_mapping(type(inner), data[name], dotted + name, base=inner)
        else:
            kwargs[name] = _convert(hints[name], data[name], dotted + name)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except ConfigError as err:
        if prefix and not str(err).startswith(prefix):
            raise ConfigError(f"{dotted}{err}") from None
        raise


def read_toml(path: str | Path) -> dict[str, Any]:
    """The mapping in TOML file ``path``; a missing or malformed file is a ConfigError."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None


def load_config(cls: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """Read TOML file ``path`` into dataclass ``cls``; ``overrides`` maps dotted keys
    (``train.steps``) to values laid over the file's (as ``--set KEY=VALUE`` does). Errors
    name the file and the key."""
    path = Path(path)
    data = read_toml(path)
    for key, value in (overrides or {}).items():
        data = set_dotted(data, key, value)
    try:
        return from_mapping(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it, table by table (``update`` wins)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of nested ``data`` with ``key`` (``a.b.c``) set to ``value``."""
    head, _, rest = key.partition(".")
    out = dict(data)
    if not rest:
        out[head] = value
        return out
    inner = out.get(head, {})
    if not isinstance(inner, dict):
        raise ConfigError(f"{key}: {head} is not a table")
    out[head] = set_dotted(inner, rest, value)
    return out


def parse_value(text: str) -> Any:
    """A TOML value (``2``, ``0.5``, ``true``, ``"x"``, ``[1, 2]``), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignment(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` (``--set`` options) -> ``{"a.b": 1, "c": "x"}``, values as TOML."""
    return {key: parse_value(value) for key, value in map(parse_assignment, assignments)}


def to_mapping(obj: Any) -> dict[str, Any]:
    """The inverse of :func:`from_mapping` (tuples become lists), for writing resolved configs."""
    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [convert(x) for x in v]
        return v

    return convert(obj)


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by ``None``: strict JSON has no inf or NaN,
    and ``json.dumps(..., allow_nan=False)`` then refuses anything that slipped through."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
