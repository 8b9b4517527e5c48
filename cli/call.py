"""``csms call`` and ``csms call-status``: send any CSMS-initiated OCPP call through the
operator API and show its outcome.

``csms call STATION ACTION [PAYLOAD]`` posts to ``/v1/stations/{id}/calls/{Action}``. The
payload is a JSON object given inline, ``@file.json``, or ``-`` (stdin); none sends ``{}``.
The outcome is printed: the CallResult payload (exit 0), or the station's CallError, a
timeout, an offline station, an undelivered call or no outcome at all (exit 3). With
``--no-wait`` the API answers at once and the call id is printed; ``csms call-status ID``
reads ``/v1/calls/{id}`` (exit 4 while the call is still pending). Other exit statuses: see
:mod:`cli.api_client`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from cli.api_client import (
    EXIT_NO_RESULT,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_REFUSED,
    ApiClient,
    add_api_flags,
    error_message,
    print_json,
    segment,
)
from cli.common import CommandError, progress

__all__ = ["add_commands", "describe_outcome"]

MAX_CALL_WAIT = 300.0
"""The API's largest ``?timeout=`` (and its default wait is shorter): seconds."""
HTTP_MARGIN = 10.0
"""Seconds the HTTP request may take beyond the API's own wait for the outcome."""
POLL_INTERVAL = 0.5
"""Seconds between reads of a pending call's outcome (``call-status --wait``)."""

_NOT_SENT = ("station_offline", "call_undelivered")
"""409 codes that are an outcome of the call (exit 3), not a refusal of the request."""


def add_commands(commands: Any) -> None:
    """The ``call`` and ``call-status`` commands."""
    call = commands.add_parser(
        "call",
        help="send an OCPP call to a station and print its outcome (operator API)",
        description="Send any CSMS-initiated call of the station's OCPP version, e.g. "
        'csms call CS001 Reset \'{"type": "Immediate"}\'. Exit status: 0 CallResult; '
        "3 CallError, timeout, offline, undelivered or no outcome; 2 refused by the API "
        "(unknown station or action, invalid payload, key); 1 API unreachable or failing.",
    )
    call.add_argument("station_id")
    call.add_argument("action", help="OCPP action, e.g. Reset, GetConfiguration, SetVariables")
    call.add_argument(
        "payload",
        nargs="?",
        help="the request payload: a JSON object, @file.json, or - for stdin (default {})",
    )
    call.add_argument(
        "--timeout",
        type=float,
        help=f"seconds the API waits for the outcome (up to {MAX_CALL_WAIT:g}; default: the "
        "gateway's call timeout plus a margin)",
    )
    call.add_argument("--no-wait", action="store_true", help="return at once and print the call id")
    add_api_flags(call)
    call.set_defaults(api_command=_call)

    status = commands.add_parser(
        "call-status",
        help="the outcome of a call sent with --no-wait (operator API)",
        description="Exit status: 0 CallResult; 3 CallError, timeout, undelivered or no "
        "outcome; 4 still pending; 2 unknown call id or refused; 1 API unreachable.",
    )
    status.add_argument("call_id", help="the id csms call --no-wait printed")
    status.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait while the call is pending"
    )
    add_api_flags(status)
    status.set_defaults(api_command=_call_status)


def read_payload(source: str | None) -> dict[str, Any]:
    """The payload argument as a JSON object: inline, ``@file`` or ``-`` (stdin)."""
    if source is None:
        return {}
    where = "the payload"
    text = source
    if source == "-":
        where, text = "stdin", sys.stdin.read()
    elif source.startswith("@"):
        where = source[1:]
        try:
            text = Path(where).read_text()
        except OSError as exc:
            raise CommandError(f"cannot read the payload file {where}: {exc.strerror}") from None
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"{where} is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise CommandError(
            f"{where} must be a JSON object (the OCPP request payload), e.g. "
            '\'{"type": "Immediate"}\''
        )
    return payload


def _call(client: ApiClient, args: argparse.Namespace) -> int:
    payload = read_payload(args.payload)
    if args.timeout is not None and not 0 < args.timeout <= MAX_CALL_WAIT:
        raise CommandError(f"--timeout must be more than 0 and at most {MAX_CALL_WAIT:g} seconds")
    params: dict[str, Any] = {"timeout": args.timeout}
    if args.no_wait:
        params["wait"] = False
    response = client.request(
        "POST",
        f"/stations/{segment(args.station_id)}/calls/{segment(args.action)}",
        params=params,
        body=payload,
        timeout=(args.timeout or MAX_CALL_WAIT) + HTTP_MARGIN,
        accept=(409, 504),
    )
    body = response.json()
    if response.status_code == 409:
        if not isinstance(body, dict) or body.get("code") not in _NOT_SENT:
            raise CommandError(error_message(response), EXIT_REFUSED)
        if args.json:
            print_json(body)
        raise CommandError(error_message(response), EXIT_NO_RESULT)
    if body.get("outcome") == "pending":  # --no-wait: sent, the outcome comes later
        if args.json:
            print_json(body)
        else:
            print(body["message_id"], flush=True)
            progress(
                f"sent {args.action} to {args.station_id}; its outcome: "
                f"csms call-status {body['message_id']}"
            )
        return EXIT_OK
    if args.json:
        print_json(body)
    else:
        print(describe_outcome(body), flush=True)
    return _exit_status(body)


def _call_status(client: ApiClient, args: argparse.Namespace) -> int:
    deadline = time.monotonic() + max(args.wait, 0.0)
    path = f"/calls/{segment(args.call_id)}"
    body = client.get(path)
    while body.get("outcome") == "pending" and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        body = client.get(path)
    if args.json:
        print_json(body)
    else:
        print(describe_outcome(body), flush=True)
    return _exit_status(body)


def _exit_status(body: dict[str, Any]) -> int:
    outcome = body.get("outcome")
    if outcome == "result":
        return EXIT_OK
    if outcome == "pending":
        return EXIT_PENDING
    return EXIT_NO_RESULT


def describe_outcome(body: dict[str, Any]) -> str:
    """A call's outcome for people: what the station answered, or why it did not."""
    station = body.get("station_id", "?")
    action = body.get("action", "?")
    message = f"message {body.get('message_id') or '-'}"
    outcome = body.get("outcome")
    if outcome == "result":
        answer = json.dumps(body.get("payload"), indent=2, ensure_ascii=False)
        return f"{station} answered {action} ({body.get('version')}, {message}):\n{answer}"
    if outcome == "error":
        text = f"{station} answered {action} with CallError {body.get('error_code')}"
        if body.get("error_description"):
            text += f": {body['error_description']}"
        if body.get("error_details"):
            text += f"\ndetails: {json.dumps(body['error_details'], ensure_ascii=False)}"
        return f"{text} ({message})"
    if outcome == "timeout":
        return f"{station} did not answer {action} within the gateway's call timeout ({message})"
    if outcome == "no_outcome":
        return (
            f"no outcome of {action} to {station} before the API stopped waiting: whether the "
            f"station got it is unknown ({message})"
        )
    if outcome == "undelivered":
        reason = body.get("error_description") or "undelivered"
        return f"{action} to {station} was not delivered: {reason} ({message})"
    if outcome == "offline":
        return f"{station} is not connected to any gateway: {action} was not sent"
    if outcome == "pending":
        return f"{action} to {station} is still waiting for the station's answer ({message})"
    return f"{action} to {station}: outcome {outcome} ({message})"
