"""OCA JSON schemas of OCPP 1.6 (with the security extension) and 2.0.1, compiled validators.

Schemas ship as data files: ``v16/{Action}.json`` / ``v16/{Action}Response.json`` and
``v201/{Action}Request.json`` / ``v201/{Action}Response.json``. Validators are compiled with
fastjsonschema once per process (``compile_all`` at start-up, about 2 s for both versions)
and shared by every router.

Validation failures are reported as :class:`SchemaViolation` naming the failing field
(``data.idTag`` style paths become ``idTag``) and the violated rule, from which the router
picks the version's CallError code.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from enum import Enum
from importlib import resources
from typing import Any

import fastjsonschema

from csms.errors import ProtocolFault
from csms.versions import UnsupportedVersion, spec, supported


class Direction(Enum):
    REQUEST = "request"
    RESPONSE = "response"


class SchemaViolation(ProtocolFault):
    """A payload that does not match its schema: ``field`` is the dotted path of the failing
    field ('' for the payload itself), ``rule`` the JSON-schema keyword that failed
    (required, type, enum, maxLength, ...)."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.rule = rule
        self.message = message

    def __str__(self) -> str:
        return self.message


Validator = Callable[[Any], Any]

_lock = threading.Lock()
_validators: dict[tuple[str, str, Direction], Validator] = {}
_actions: dict[str, frozenset[str]] = {}


def _schema_file(version: str, action: str, direction: Direction) -> str:
    row = spec(version)
    pattern = row.response_schema if direction is Direction.RESPONSE else row.request_schema
    return pattern.format(action=action)


def actions(version: str) -> frozenset[str]:
    """Every action name the OCA schemas define for ``version``."""
    if version not in _actions:
        row = spec(version)
        folder = resources.files(__name__).joinpath(row.schema_folder)
        head, _, tail = row.request_schema.partition("{action}")
        response_tail = row.response_schema.partition("{action}")[2]
        names = set()
        for entry in folder.iterdir():
            name = entry.name
            if not name.endswith(tail) or name.endswith(response_tail) or not name.startswith(head):
                continue
            names.add(name[len(head) : len(name) - len(tail)])
        _actions[version] = frozenset(names)
    return _actions[version]


def validator(version: str, action: str, direction: Direction) -> Validator:
    """The compiled validator of one message; compiled on first use, then cached.

    Raises ``KeyError`` for unknown versions or actions.
    """
    key = (version, action, direction)
    found = _validators.get(key)
    if found is not None:
        return found
    try:
        known = actions(version)
    except UnsupportedVersion:
        raise KeyError(f"unknown OCPP version {version!r}") from None
    if action not in known:
        raise KeyError(f"{version} has no action {action!r}")
    with _lock:
        found = _validators.get(key)
        if found is None:
            path = resources.files(__name__).joinpath(
                spec(version).schema_folder, _schema_file(version, action, direction)
            )
            schema = json.loads(path.read_text(encoding="utf-8"))
            schema.pop("$id", None)
            found = fastjsonschema.compile(schema)
            _validators[key] = found
    return found


def validate(version: str, action: str, direction: Direction, payload: Any) -> None:
    """Validate ``payload``; raises :class:`SchemaViolation` or ``KeyError`` (unknown action)."""
    check = validator(version, action, direction)
    try:
        check(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        path = exc.name or "data"
        field = path[len("data") :].lstrip(".") if path.startswith("data") else path
        rule = exc.rule or "schema"
        if rule == "required" and isinstance(exc.rule_definition, list):
            missing = _first_missing(exc.value, exc.rule_definition)
            if missing:
                field = f"{field}.{missing}" if field else missing
        raise SchemaViolation(field, rule, f"{field or 'payload'}: {exc.message}") from None


def _first_missing(value: Any, required: list[str]) -> str | None:
    if isinstance(value, dict):
        for name in required:
            if name not in value:
                return name
    return None


def compile_all() -> int:
    """Compile every validator of every version now (start-up), returning how many."""
    count = 0
    for version in supported():
        for action in actions(version):
            for direction in Direction:
                validator(version, action, direction)
                count += 1
    return count
