"""What the ``csms`` commands that drive the operator API over HTTP share.

The API commands (``station list/show``, ``call``, ``call-status``, ``tx``) need no settings
file, broker or Redis: only where the API is and a key.

- base URL: ``--api-url``, else ``CSMS_API_URL``, else ``http://127.0.0.1:9080`` (``csms
  run``'s default); a trailing ``/v1`` is accepted;
- key: ``--api-key``, else ``CSMS_API_KEY``; sent as ``Authorization: Bearer <key>``
  (prefer the environment variable: a flag is visible to other users in ``ps``).

Exit statuses of every API command:

====  ==============================================================================
0     done
1     the API could not be reached, did not answer in time, or failed (HTTP 5xx)
2     the request was refused (HTTP 4xx: bad key or scope, unknown station, invalid
      parameter or payload) or the command line is wrong; the message says why
3     ``csms call``: the call got no CallResult (CallError, timeout, offline station,
      undelivered, no outcome)
4     ``csms call-status``: the call is still pending
====  ==============================================================================

Errors are printed as one line on stderr, from the API's error shape
``{code, message, details}``: the message, then the HTTP status and code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx

from cli.common import CommandError

__all__ = [
    "DEFAULT_API_URL",
    "EXIT_FAILED",
    "EXIT_NO_RESULT",
    "EXIT_OK",
    "EXIT_PENDING",
    "EXIT_REFUSED",
    "ApiClient",
    "ApiCommand",
    "ApiRequestError",
    "Progress",
    "add_api_flags",
    "cell",
    "error_message",
    "print_json",
    "run",
    "segment",
    "table",
]

DEFAULT_API_URL = "http://127.0.0.1:9080"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_NO_RESULT = 3
EXIT_PENDING = 4

CONNECT_TIMEOUT = 5.0
"""Seconds to open a connection to the API."""
READ_TIMEOUT = 30.0
"""Seconds an ordinary request may take (calls set their own, from ``--timeout``)."""
PAGE_SIZE = 1000
"""Items per page when following ``next_cursor`` (the API's largest page)."""


class ApiRequestError(CommandError):
    """The API refused or failed a request; ``status`` and ``body`` are what it answered."""

    def __init__(
        self, message: str, exit_code: int, status: int | None = None, body: Any = None
    ) -> None:
        super().__init__(message, exit_code)
        self.status = status
        self.body = body


def error_message(response: httpx.Response) -> str:
    """One line for people from an error answer: the API's message, status and code, and
    the failing field when the message does not already name it."""
    body = _json_or_none(response)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        message = " ".join(str(body["message"]).split())  # one line, whatever it holds
        code = body.get("code", "")
        details = body.get("details")
        field = details.get("field") if isinstance(details, dict) else None
        invalid = response.status_code in (400, 422)  # say which parameter, if not said
        if invalid and isinstance(field, str) and field and field not in message:
            where = details.get("in") if isinstance(details, dict) else None
            message += f" (field {field}{f' in {where}' if where else ''})"
        return f"{message} [HTTP {response.status_code} {code}]".replace(" ]", "]")
    text = " ".join(response.text.split())[:200]
    return f"HTTP {response.status_code} from {response.request.url}: {text or 'no body'}"


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def segment(value: str) -> str:
    """One path segment: a station id with ``/`` travels as ``%2F``."""
    return quote(value, safe="")


class ApiClient:
    """A small synchronous client of the operator API: JSON requests, errors turned into
    :class:`ApiRequestError`, pages followed, downloads streamed."""

    def __init__(
        self,
        base_url: str,
        key: str | None,
        *,
        timeout: float = READ_TIMEOUT,
    ) -> None:
        base = base_url.rstrip("/").removesuffix("/v1")
        if not base.startswith(("http://", "https://")):
            raise CommandError(
                f"--api-url {base_url!r} is not an http:// or https:// URL", EXIT_REFUSED
            )
        headers = {"Accept": "application/json", "User-Agent": "csms-cli"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.base_url = base
        self.has_key = bool(key)
        self._client = httpx.Client(
            base_url=f"{base}/v1",
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT),
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
        accept: Sequence[int] = (),
    ) -> httpx.Response:
        """Send one request; a status outside 2xx and ``accept`` raises ApiRequestError."""
        options: dict[str, Any] = {"params": _query(params)}
        if body is not None:
            options["json"] = body
        if timeout is not None:
            options["timeout"] = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT)
        with self._errors():
            response = self._client.request(method, path, **options)
        if not response.is_success and response.status_code not in accept:
            raise self._refusal(response)
        return response

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """The JSON of a successful GET."""
        return self.request("GET", path, params=params).json()

    def items(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
        progress: Progress | None = None,
    ) -> list[Any]:
        """Every item of a listing (at most ``limit``), following ``next_cursor``."""
        collected: list[Any] = []
        query = dict(params or {})
        cursor: str | None = None
        while limit is None or len(collected) < limit:
            want = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(collected))
            page = self.get(path, {**query, "limit": want, "cursor": cursor})
            collected.extend(page["items"])
            cursor = page.get("next_cursor")
            if cursor is None:
                break
            if progress is not None:
                progress.update(len(collected))
        return collected[:limit] if limit is not None else collected

    @contextmanager
    def stream(
        self, path: str, params: Mapping[str, Any] | None = None
    ) -> Iterator[httpx.Response]:
        """A successful GET whose body is read as it arrives."""
        with self._errors(), self._client.stream("GET", path, params=_query(params)) as response:
            if not response.is_success:
                response.read()
                raise self._refusal(response)
            yield response

    def _refusal(self, response: httpx.Response) -> ApiRequestError:
        status = response.status_code
        message = error_message(response)
        if status == 401:
            message += (
                "; set --api-key or CSMS_API_KEY" if not self.has_key else "; check the API key"
            )
        return ApiRequestError(
            message,
            EXIT_REFUSED if 400 <= status < 500 else EXIT_FAILED,
            status,
            _json_or_none(response),
        )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Transport failures as one clear line (exit 1)."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise CommandError(
                f"the operator API at {self.base_url} did not answer in time ({_kind(exc)})",
                EXIT_FAILED,
            ) from None
        except httpx.TransportError as exc:
            raise CommandError(
                f"cannot reach the operator API at {self.base_url}: {exc or _kind(exc)} "
                "(is csms run or csms api running there? set --api-url or CSMS_API_URL)",
                EXIT_FAILED,
            ) from None


def _kind(exc: Exception) -> str:
    return type(exc).__name__


def _query(params: Mapping[str, Any] | None) -> dict[str, str | int | float]:
    """Query parameters without the unset ones; booleans as the API spells them."""
    query: dict[str, str | int | float] = {}
    for name, value in (params or {}).items():
        if value is None:
            continue
        query[name] = ("true" if value else "false") if isinstance(value, bool) else value
    return query


ApiCommand = Callable[[ApiClient, argparse.Namespace], int]
"""A command: the client and its arguments in, an exit status out."""


def add_api_flags(parser: argparse.ArgumentParser, *, as_json: bool = True) -> None:
    """``--api-url``, ``--api-key`` and (for commands that print records) ``--json``."""
    parser.add_argument(
        "--api-url",
        help=f"operator API base URL (or CSMS_API_URL; default {DEFAULT_API_URL})",
    )
    parser.add_argument(
        "--api-key", help="API key (or CSMS_API_KEY, which other users cannot see in ps)"
    )
    if as_json:
        parser.add_argument(
            "--json", action="store_true", help="print the API's JSON (lists: one array)"
        )


def run(command: ApiCommand, args: argparse.Namespace) -> int:
    """Run an API command with a client made from its flags and the environment."""
    url = args.api_url or os.environ.get("CSMS_API_URL") or DEFAULT_API_URL
    key = args.api_key or os.environ.get("CSMS_API_KEY") or None
    client = ApiClient(url, key)
    try:
        return command(client, args)
    finally:
        client.close()


# --- output --------------------------------------------------------------------------------


def print_json(value: Any) -> None:
    """The API's JSON, indented for people and one value for ``jq``."""
    print(json.dumps(value, indent=2, ensure_ascii=False), flush=True)


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows in aligned columns under ``headers`` (the last column is not padded)."""
    lines = [list(headers), *([cell(value) for value in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


class Progress:
    """Counts on stderr for long work: at most one line a second, rewritten in place on a
    terminal, and a last line when done."""

    def __init__(self, what: str, *, interval: float = 1.0) -> None:
        self._what = what
        self._interval = interval
        self._last = time.monotonic()
        self._tty = sys.stderr.isatty()
        self._shown = False

    def update(self, count: int) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        self._show(f"{count} {self._what} so far")

    def done(self, message: str) -> None:
        if self._shown and self._tty:
            print(file=sys.stderr)
        print(message, file=sys.stderr, flush=True)

    def _show(self, text: str) -> None:
        self._shown = True
        if self._tty:
            print(f"\r{text}", end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)
