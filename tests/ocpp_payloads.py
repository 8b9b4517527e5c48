"""Schema-valid OCPP payloads built from the OCA JSON schemas in ``ocpp_schemas/``.

Tests that must cover every action of a version (not a hand-picked few) build their request
and response payloads here instead of writing them by hand, so an action added to the
schemas is covered the day it appears. :func:`build` walks one schema: ``$ref`` into its
``definitions``, objects (every declared property, or only the required ones), arrays within
``minItems``/``maxItems``, enums, ``date-time`` and ``uri`` formats, ``maxLength``,
``minimum``/``maximum`` and ``multipleOf``. Values are deterministic for a given seed and
differ from field to field (strings name their field), so a payload that arrives changed or
mixed up with another is noticed.

The schema features it handles are the ones the OCA schemas use; :func:`build` raises
:class:`UnsupportedSchema` on anything else rather than guess.
"""

from __future__ import annotations

import json
import random
import zlib
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

from csms.versions import spec
from ocpp_schemas import Direction

__all__ = ["UnsupportedSchema", "build", "schema"]

_KNOWN_KEYWORDS = frozenset(
    {
        "$schema",
        "$id",
        "$ref",
        "additionalItems",
        "additionalProperties",
        "comment",
        "default",
        "definitions",
        "description",
        "enum",
        "format",
        "items",
        "javaType",
        "maxItems",
        "maxLength",
        "maximum",
        "minItems",
        "minimum",
        "multipleOf",
        "properties",
        "required",
        "title",
        "type",
    }
)


class UnsupportedSchema(ValueError):
    """The schema uses a keyword or type the generator does not know how to satisfy."""


@cache
def schema(version: str, action: str, direction: Direction) -> dict[str, Any]:
    """The OCA JSON schema of one message, read from ``ocpp_schemas`` (cached)."""
    row = spec(version)
    pattern = row.response_schema if direction is Direction.RESPONSE else row.request_schema
    path = resources.files("ocpp_schemas").joinpath(
        row.schema_folder, pattern.format(action=action)
    )
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def build(
    version: str,
    action: str,
    direction: Direction,
    *,
    full: bool = True,
    seed: int | None = None,
) -> dict[str, Any]:
    """A payload of ``action``'s request or response that its schema accepts.

    ``full`` fills every declared property (nested ones too), otherwise only the required
    ones. ``seed`` varies enum choices and numbers; by default it derives from the message's
    name, so the same message always gets the same payload.
    """
    root = schema(version, action, direction)
    if seed is None:
        seed = zlib.crc32(f"{version}/{action}/{direction.value}".encode())
    payload = _Builder(root, random.Random(seed), full).value(root, action)
    if not isinstance(payload, dict):
        raise UnsupportedSchema(f"{version} {action} {direction.value}: not an object schema")
    return payload


class _Builder:
    def __init__(self, root: dict[str, Any], rng: random.Random, full: bool) -> None:
        self._root = root
        self._rng = rng
        self._full = full
        self._counter = 0

    def value(self, node: dict[str, Any], name: str, depth: int = 0) -> Any:
        if depth > 32:
            raise UnsupportedSchema(f"{name}: schema nested deeper than 32 levels")
        unknown = set(node) - _KNOWN_KEYWORDS
        if unknown:
            raise UnsupportedSchema(f"{name}: unsupported keywords {sorted(unknown)}")
        if "$ref" in node:
            return self.value(self._resolve(node["$ref"]), name, depth)
        if "enum" in node:
            return self._rng.choice(node["enum"])
        kind = node.get("type")
        if kind == "object":
            return self._object(node, name, depth)
        if kind == "array":
            return self._array(node, name, depth)
        if kind == "string":
            return self._string(node, name)
        if kind == "integer":
            return self._integer(node)
        if kind == "number":
            return self._number(node)
        if kind == "boolean":
            return self._rng.choice([True, False])
        if kind is None:
            # Any JSON at all (DataTransfer's data): every JSON type, nested.
            self._counter += 1
            return {name: [self._counter, 2.5, f"é{self._counter}", None, True, {"k": []}]}
        raise UnsupportedSchema(f"{name}: unsupported type {kind!r}")

    def _resolve(self, ref: str) -> dict[str, Any]:
        prefix = "#/definitions/"
        if not ref.startswith(prefix):
            raise UnsupportedSchema(f"unsupported $ref {ref!r}")
        found: dict[str, Any] = self._root["definitions"][ref[len(prefix) :]]
        return found

    def _object(self, node: dict[str, Any], name: str, depth: int) -> dict[str, Any]:
        properties: dict[str, Any] = node.get("properties", {})
        required = set(node.get("required", ()))
        missing = required - set(properties)
        if missing:
            raise UnsupportedSchema(f"{name}: required {sorted(missing)} are not described")
        return {
            key: self.value(sub, key, depth + 1)
            for key, sub in properties.items()
            if key in required or self._full
        }

    def _array(self, node: dict[str, Any], name: str, depth: int) -> list[Any]:
        items = node.get("items")
        if not isinstance(items, dict):
            raise UnsupportedSchema(f"{name}: only arrays of one item schema are supported")
        low = int(node.get("minItems", 0))
        high = int(node.get("maxItems", max(low, 2)))
        count = min(max(low, 2 if self._full else 1), high)
        return [self.value(items, name, depth + 1) for _ in range(count)]

    def _string(self, node: dict[str, Any], name: str) -> str:
        self._counter += 1
        fmt = node.get("format")
        if fmt == "date-time":
            month, day, hour = 1 + self._counter % 12, 1 + self._counter % 28, self._counter % 24
            return f"2031-{month:02d}-{day:02d}T{hour:02d}:04:05.{self._counter:03d}Z"
        if fmt == "uri":
            text = f"https://example.org/{name}/{self._counter}"
        elif fmt is not None:
            raise UnsupportedSchema(f"{name}: unsupported format {fmt!r}")
        else:
            # Non-ASCII on purpose: the payload must cross the bus and back untouched.
            text = f"{name}-é{self._counter}"
        limit = node.get("maxLength")
        return text[:limit] if limit is not None else text

    def _integer(self, node: dict[str, Any]) -> int:
        low = int(node.get("minimum", 0))
        high = int(node.get("maximum", low + 1000))
        value = self._rng.randint(low, high)
        step = node.get("multipleOf")
        if step is not None:
            value -= value % int(step)
        return value

    def _number(self, node: dict[str, Any]) -> float:
        low = Decimal(str(node.get("minimum", 0)))
        high = Decimal(str(node.get("maximum", low + 1000)))
        step = Decimal(str(node.get("multipleOf", "0.1")))
        steps = int((high - low) / step)
        return float(low + step * self._rng.randint(0, steps))
