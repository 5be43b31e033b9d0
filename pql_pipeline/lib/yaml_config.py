"""YAML configuration files validated by pydantic, with errors that name the line.

``load_model(path, Model)`` parses the file, validates it and, when validation fails,
raises ``ConfigError`` whose message lists every problem as
``<file> line <n> (<key path>): <what is wrong>`` so the person editing the file goes
straight to the right place.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file is invalid; the message says where and how to fix it."""


def _key_path(path: tuple) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[") or "<top level>"


def _line_map(node: yaml.Node, path: tuple = (), out: dict | None = None, file: Path | None = None) -> dict[tuple, int]:
    """Key path -> 1-based line of the value (or of the key, for mappings) in the file. A key
    given twice in one mapping is an error: YAML would keep the last one and silently drop
    the first (a whole section, for a top-level key)."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                raise ConfigError(f"{file} line {line} ({_key_path(path + (key,))}): duplicate key {key!r}, also on line "
                                  f"{seen[key]}; YAML would keep only this one and drop the other: merge them")
            seen[key] = line
            out[path + (key,)] = line
            _line_map(value_node, path + (key,), out, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), out, file)
            out[path + (i,)] = item.start_mark.line + 1
    return out


def read_yaml(path: Path) -> tuple[object, dict[tuple, int]]:
    """Parse a YAML file; returns the data and a key-path -> line map."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    return data, (_line_map(node, file=path) if node is not None else {})


def describe_errors(path: Path, error: ValidationError, lines: dict[tuple, int]) -> str:
    problems = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        # a validator of a whole section can name the entry: "@signals.3.name: message"
        marker = re.match(r"@([\w.]+): (.*)", msg, flags=re.S)
        if marker:
            loc = loc + tuple(int(x) if x.isdigit() else x for x in marker.group(1).split("."))
            msg = marker.group(2)
        # a message about a key the entry has ("... does not use window_days") points at that key
        named = re.search(r"does not use ([A-Za-z_]+)|give either ([A-Za-z_]+)", msg)
        if named and loc + (named.group(1) or named.group(2),) in lines:
            loc = loc + (named.group(1) or named.group(2),)
        problems.append(f"{locate(path, lines, loc)}: {msg}")
    return "\n".join(problems)


def locate(path: Path, lines: dict[tuple, int], loc: tuple, shallowest: int = 0) -> str:
    """``<file> line <n> (<key path>)``: the line of the deepest key of ``loc`` (no shallower
    than ``shallowest`` keys) that exists in the file (a missing key -> its parent)."""
    line = next((lines[loc[:n]] for n in range(len(loc), shallowest - 1, -1) if loc[:n] in lines), None)
    return f"{path}{f' line {line}' if line else ''} ({_key_path(loc)})"


def load_model(path: Path, model: type[M], transform=None) -> M:
    """Read ``path`` and validate it as ``model``; ``transform`` may adjust the raw data first."""
    data, lines = read_yaml(path)
    return validate_model(path, data, lines, model, transform)


def validate_model(path: Path, data, lines: dict[tuple, int], model: type[M], transform=None) -> M:
    """``data`` read from ``path`` (``read_yaml``) validated as ``model``."""
    data = {} if data is None else data
    if transform is not None:
        data = transform(data)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_errors(path, e, lines)) from None
