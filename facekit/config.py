"""The one way a YAML settings file is read: a mapping, or one line saying what is wrong and where."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from facekit.errors import UserError


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


def check_types(config: Any, where: str) -> None:
    """Each field of a settings dataclass has its default's type (an int may stand for a float), so a YAML
    typo fails here, in one line, not deep inside a run."""
    import dataclasses

    for field in dataclasses.fields(config):
        default = field.default if field.default is not dataclasses.MISSING else None
        value = getattr(config, field.name)
        if default is None or value is None:
            continue
        kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,), tuple: (tuple, list)}.get(type(default))
        wrong = kinds is not None and (not isinstance(value, kinds) or (type(default) is not bool and isinstance(value, bool)))
        if wrong:
            raise UserError(f"{where}: {field.name} must be a {type(default).__name__} like {default!r}, got {value!r}")
