"""Operator plug-ins: a ``package.module:attribute`` naming a factory of a service.

The factory is called with the :class:`csms.config.Settings` and returns the service, or an
awaitable of it (so it can open connections first). What it returns is checked against the
service's Protocol at start-up, so a wrong plug-in fails with a message naming the missing
methods instead of an AttributeError on the first station message.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "check_protocol",
    "instantiate",
    "load_factory",
    "protocol_methods",
]


def load_factory(spec: str) -> Callable[..., Any]:
    """Import and return the callable named by ``spec`` (``package.module:attribute``;
    the attribute may be dotted, e.g. ``module:Class.create``).

    Raises ValueError for a malformed spec, ImportError when the module or attribute does
    not exist, TypeError when the attribute is not callable; each message names ``spec``.
    """
    module_name, sep, attribute = spec.partition(":")
    module_name, attribute = module_name.strip(), attribute.strip()
    if not sep or not module_name or not attribute:
        raise ValueError(f"plug-in {spec!r} must name a factory as 'package.module:attribute'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"plug-in {spec!r}: cannot import module {module_name!r}: {exc}", name=module_name
        ) from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ImportError(
                f"plug-in {spec!r}: module {module_name!r} has no attribute {attribute!r}",
                name=module_name,
            ) from None
    if not callable(target):
        raise TypeError(f"plug-in {spec!r}: {attribute!r} is not callable")
    return target  # type: ignore[no-any-return]


def protocol_methods(protocol: type) -> list[str]:
    """Public methods a Protocol requires (its own and those of the Protocols it extends)."""
    names: list[str] = []
    for cls in reversed(protocol.__mro__):
        if not getattr(cls, "_is_protocol", False) or cls is Protocol:
            continue
        names.extend(
            name
            for name, value in vars(cls).items()
            if not name.startswith("_") and callable(value) and name not in names
        )
    return names


def check_protocol(obj: object, protocol: type, spec: str) -> None:
    """Raise TypeError naming what ``obj`` lacks to satisfy ``protocol`` (runtime_checkable)."""
    missing = [
        name for name in protocol_methods(protocol) if not callable(getattr(obj, name, None))
    ]
    if missing or not isinstance(obj, protocol):
        raise TypeError(
            f"plug-in {spec!r} returned {type(obj).__name__}, which is not a "
            f"{protocol.__name__}: missing {', '.join(missing) or 'required members'}"
        )


async def instantiate(spec: str, protocol: type, *args: Any) -> Any:
    """Load the factory named by ``spec``, call it with ``args``, await the result if it is
    awaitable, and check it satisfies ``protocol``."""
    factory = load_factory(spec)
    result = factory(*args)
    if inspect.isawaitable(result):
        result = await result
    check_protocol(result, protocol, spec)
    return result
