"""TOML load and save.

Load never writes. Save edits the existing TOML document in place (tomlkit keeps the
user's comments and layout), only touching keys whose values changed, and replaces the
file atomically so a crash mid-write cannot leave half a spec behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import BaseModel, ValidationError
from tomlkit.exceptions import ParseError
from tomlkit.items import AoT, Table

from .errors import SpecError, SpecIssue, issues_from_validation
from .models import Spec


def parse_spec(text: str, source: Path | str | None = None) -> Spec:
    try:
        data = tomlkit.parse(text).unwrap()
    except ParseError as exc:
        raise SpecError([SpecIssue("", f"not valid TOML: {exc}")], source) from exc
    return spec_from_data(data, source)


def spec_from_data(data: dict[str, Any], source: Path | str | None = None) -> Spec:
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(issues_from_validation(exc), source) from exc


def load_spec(path: Path) -> Spec:
    path = Path(path)
    if not path.exists():
        raise SpecError(
            [SpecIssue("", "no spec file here; run `homespun init` to create one")], path
        )
    return parse_spec(path.read_text(encoding="utf-8"), path)


def _plain(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value


def _field_default(model: BaseModel, name: str) -> Any:
    field = type(model).model_fields[name]
    default = field.get_default(call_default_factory=True)
    return _dump(default)


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


def _merge(doc: Any, model: BaseModel, full: bool = False) -> None:
    """Bring `doc` (a tomlkit container) to `model`, keeping comments of untouched keys.

    Keys the file leaves out stay out while they equal the field default, so a short spec
    stays short after an edit; tables and arrays of tables are merged element-wise.
    """
    fields = type(model).model_fields
    for key in list(doc.keys()):
        if key not in fields:
            del doc[key]
    for name in fields:
        value = getattr(model, name)
        new = _dump(value)
        if name in doc:
            current = doc[name]
            if isinstance(value, BaseModel) and isinstance(current, Table):
                _merge(current, value, full)
            elif (
                isinstance(current, AoT)
                and isinstance(value, list)
                and value
                and all(isinstance(v, BaseModel) for v in value)
            ):
                for table, item in zip(current, value, strict=False):
                    _merge(table, item, full)
                while len(current) > len(value):
                    del current[len(current) - 1]
                for item in value[len(current) :]:
                    current.append(_toml_value(item, full))
            elif _plain(current) != new:
                doc[name] = _toml_value(value, full)
        elif full or new != _field_default(model, name):
            doc[name] = _toml_value(value, full)


def _toml_value(value: Any, full: bool = False) -> Any:
    if isinstance(value, BaseModel):
        table = tomlkit.table()
        _merge(table, value, full)
        table.add(tomlkit.nl())
        return table
    if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
        aot = tomlkit.aot()
        for item in value:
            aot.append(_toml_value(item, full))
        return aot
    if isinstance(value, str) and "\n" in value:
        return tomlkit.string(value, multiline=True)
    return _dump(value)


def render_spec(spec: Spec, previous_text: str | None = None) -> str:
    """TOML text for `spec`; when the previous text is given its comments are kept."""
    doc = tomlkit.parse(previous_text) if previous_text else tomlkit.document()
    _merge(doc, spec, full=previous_text is None)
    text = tomlkit.dumps(doc)
    # Belt and braces: what we write must load back to the same spec.
    back = parse_spec(text, "<rendered spec>")
    if back.content_hash() != spec.content_hash():
        raise RuntimeError("spec did not round-trip through TOML; refusing to write it")
    return text


def save_spec(spec: Spec, path: Path) -> None:
    path = Path(path)
    previous = path.read_text(encoding="utf-8") if path.exists() else None
    atomic_write(path, render_spec(spec, previous))


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
