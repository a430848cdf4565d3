"""Configs are plain dataclasses loaded from YAML with strict keys and ``--set a.b=c`` overrides.

Each stage owns its dataclass (``FeatureConfig`` in features.py, ``TrainConfig`` in train.py, ...);
this module only knows how to turn YAML + overrides into one, and how to dump it back, so the
resolved config can be written into data and exp dirs and read back identically.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from asr.atomic import write_text
from asr.errors import AsrError

T = TypeVar("T")


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type[T], data: dict | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise AsrError naming them.

    A key that ``cls.renamed_keys`` (old -> new, a ClassVar) lists raises one line naming its new name.
    """
    data = dict(data or {})
    if not isinstance(data, dict):
        raise AsrError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    renamed = {k: v for k, v in getattr(cls, "renamed_keys", {}).items() if k in data}
    if renamed:
        old, new = next(iter(renamed.items()))
        raise AsrError(f"{where}: key {old!r} was renamed to {new!r}: write {new!r} instead (in YAML or --set)")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise AsrError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        tp = _strip_optional(hints[name])
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            if value is not None and not isinstance(value, dict):
                raise AsrError(f"{key}: expected a mapping, got {value!r}")
            kwargs[name] = from_dict(tp, value, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise AsrError(f"{where}: {e}") from None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    if value is None or tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise AsrError(f"{key}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        out = [_coerce(v, inner, key) for v in value]
        return out if origin is list else tuple(out)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise AsrError(f"{key}: {value!r} is not one of {', '.join(map(repr, typing.get_args(tp)))}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise AsrError(f"{key}: expected a mapping, got {value!r}")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 (PyYAML) reads 3e-4, without a dot, as a string; as a float field's value it is the number.
        try:
            return float(value)
        except ValueError:
            raise AsrError(f"{key}: expected a number, got {value!r}") from None
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise AsrError(f"{key}: expected {tp.__name__}, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise AsrError(f"{key}: expected int, got {value!r}")
    return value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b=c`` strings to a nested dict (values parsed as YAML, so ``0.5``/``true`` get types)."""
    data = dict(data or {})
    for item in overrides or []:
        if "=" not in item:
            raise AsrError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=0.001")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            child = dict(child) if isinstance(child, dict) else {}
            node[p] = child
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping; a missing or malformed file is one AsrError line."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise AsrError(f"{path}: no such config file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise AsrError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AsrError(f"{path}: expected a mapping at the top level")
    return data


def merge(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``, recursively for nested mappings (a later config file refines an earlier one)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(
    cls: type[T],
    path: str | os.PathLike | list[str | os.PathLike] | None = None,
    overrides: list[str] | None = None,
) -> T:
    """Load ``cls`` from a YAML file, or several merged left to right (defaults when None), plus overrides."""
    paths = [p for p in (path if isinstance(path, (list, tuple)) else [path]) if p]
    data: dict = {}
    for p in paths:
        data = merge(data, read_yaml(p))
    where = "+".join(str(p) for p in paths) or "config"
    return from_dict(cls, apply_overrides(data, overrides), where)


def to_dict(obj: Any) -> dict:
    """Dataclass → plain dict (tuples become lists so YAML stays portable)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))


def dump(obj: Any, path: str | os.PathLike) -> None:
    """Write a dataclass (or dict) as YAML, atomically."""
    data = obj if isinstance(obj, dict) else to_dict(obj)
    write_text(Path(path), yaml.safe_dump(data, sort_keys=False))
