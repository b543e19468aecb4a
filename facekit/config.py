"""The one way settings are read: a YAML file's mapping (or one line saying what is wrong and where), then a
settings dataclass built from it (unknown keys named, lists made tuples, nested sections, types checked)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

from facekit.errors import UserError

T = TypeVar("T")


def read_yaml_mapping(path: str | Path, what: str = "settings") -> dict[str, Any]:
    """The file's top-level mapping (empty file: {}). Missing files, syntax errors (with their line) and
    non-mappings are UserErrors naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such {what} file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where} ({getattr(err, 'problem', None) or err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read it ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of {what}, got {type(data).__name__}")
    return data


def settings(cls: type[T], data: Mapping[str, Any], where: str, what: str = "settings") -> T:
    """`cls` from a mapping of its fields: an unknown key is one line naming the known ones; a list becomes a
    tuple where the default is one; a mapping given for a dataclass-valued field (a section) is built the
    same way; then each value must have its default's type (`check_types`)."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown {what} {unknown}; known: {sorted(known)}")
    values = {}
    for field in dataclasses.fields(cls):
        if field.name not in data:
            continue
        value, default = data[field.name], _default(field)
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            value = settings(type(default), value, where, f"{field.name} settings")
        elif dataclasses.is_dataclass(default) and not isinstance(value, type(default)):
            raise UserError(f"{where}: {field.name} must be a mapping of its settings, got {value!r}")
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    config = cls(**values)
    check_types(config, where)
    return config


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def check_types(config: Any, where: str) -> None:
    """Each field of a settings dataclass has its default's type (an int may stand for a float), so a YAML
    typo fails here, in one line, not deep inside a run."""
    for field in dataclasses.fields(config):
        default = field.default if field.default is not dataclasses.MISSING else None
        value = getattr(config, field.name)
        if default is None or value is None:
            continue
        kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,), tuple: (tuple, list)}.get(type(default))
        wrong = kinds is not None and (not isinstance(value, kinds) or (type(default) is not bool and isinstance(value, bool)))
        if wrong:
            raise UserError(f"{where}: {field.name} must be {KIND_NAMES[type(default)]} like {default!r}, got {value!r}")


KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text", tuple: "a list"}


def check_bounds(config: Any, where: str, whole: Mapping[str, int] | None = None, above_zero: Sequence[str] = (),
                 non_negative: Sequence[str] = ()) -> None:
    """Each named setting within its bound (whole numbers at least their minimum, numbers > 0 or ≥ 0), so a
    value that would crash or silently misbehave deep in a run is one line here."""
    for name, low in (whole or {}).items():
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UserError(f"{where}: {name} must be a whole number ≥ {low}, got {value!r}")
    for name in (*above_zero, *non_negative):
        value, strict = getattr(config, name), name in above_zero
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not (value > 0 if strict else value >= 0):  # NaN fails both
            raise UserError(f"{where}: {name} must be a number {'> 0' if strict else '≥ 0'}, got {value!r}")
