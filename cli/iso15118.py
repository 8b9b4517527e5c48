"""``csms iso15118 STATION MESSAGE [PAYLOAD]``: ISO 15118 certificate management through the
operator API (``POST /v1/stations/{id}/iso15118/{messageId}``), in 2.0.1 terms for stations
of either version: a 1.6 charge point gets the message wrapped in a DataTransfer.

The payload is the 2.0.1 request, given like ``csms call``'s (inline JSON, ``@file.json`` or
``-``). Printed: the station's 2.0.1 response, unwrapped (exit 0); a DataTransfer the charge
point refused (Rejected, UnknownVendorId, UnknownMessageId) or whose data is no valid
response, and every outcome ``csms call`` exits 3 for, exit 3. ``--no-wait`` prints the call
id for ``csms call-status``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from cli.api_client import (
    EXIT_NO_RESULT,
    EXIT_OK,
    EXIT_REFUSED,
    ApiClient,
    add_api_flags,
    error_message,
    print_json,
    segment,
)
from cli.call import HTTP_MARGIN, MAX_CALL_WAIT, describe_outcome, read_payload
from cli.common import CommandError

__all__ = ["add_commands", "describe_answer"]

MESSAGES = (
    "CertificateSigned",
    "DeleteCertificate",
    "GetInstalledCertificateIds",
    "InstallCertificate",
    "TriggerMessage",
)


def add_commands(commands: Any) -> None:
    """The ``iso15118`` command."""
    command = commands.add_parser(
        "iso15118",
        help="send an ISO 15118 certificate message (wrapped for 1.6 stations; operator API)",
        description="e.g. csms iso15118 CP16 InstallCertificate "
        '\'{"certificateType": "V2GRootCertificate", "certificate": "-----BEGIN ..."}\'. '
        "Exit status: 0 answered; 3 refused DataTransfer, CallError, timeout, offline, "
        "undelivered or no outcome; 2 refused by the API; 1 API unreachable or failing.",
    )
    command.add_argument("station_id")
    command.add_argument("message_id", choices=MESSAGES, metavar="MESSAGE")
    command.add_argument(
        "payload", nargs="?", help="the 2.0.1 request: JSON object, @file.json, or - (stdin)"
    )
    command.add_argument("--timeout", type=float, help="seconds the API waits for the outcome")
    command.add_argument("--no-wait", action="store_true", help="return at once with the call id")
    add_api_flags(command)
    command.set_defaults(api_command=_send)


def _send(client: ApiClient, args: argparse.Namespace) -> int:
    payload = read_payload(args.payload)
    if args.timeout is not None and not 0 < args.timeout <= MAX_CALL_WAIT:
        raise CommandError(f"--timeout must be more than 0 and at most {MAX_CALL_WAIT:g} seconds")
    params: dict[str, Any] = {"timeout": args.timeout}
    if args.no_wait:
        params["wait"] = False
    response = client.request(
        "POST",
        f"/stations/{segment(args.station_id)}/iso15118/{segment(args.message_id)}",
        params=params,
        body=payload,
        timeout=(args.timeout or MAX_CALL_WAIT) + HTTP_MARGIN,
        accept=(409, 504),
    )
    body = response.json()
    if response.status_code == 409:
        code = body.get("code") if isinstance(body, dict) else None
        raise CommandError(
            error_message(response),
            EXIT_NO_RESULT if code in ("station_offline", "call_undelivered") else EXIT_REFUSED,
        )
    if args.json:
        print_json(body)
    elif body.get("outcome") == "pending":
        print(body["message_id"], flush=True)
    else:
        print(describe_answer(body), flush=True)
    if body.get("outcome") == "pending":
        return EXIT_OK
    answer = body.get("iso15118") or {}
    return EXIT_OK if answer.get("payload") is not None else EXIT_NO_RESULT


def describe_answer(body: dict[str, Any]) -> str:
    """The station's 2.0.1 answer for people, or why there is none."""
    answer = body.get("iso15118")
    if not answer:
        return describe_outcome(body)
    station, message = body.get("station_id", "?"), answer.get("message_id", "?")
    how = "wrapped in DataTransfer" if answer.get("wrapped") else "as a 2.0.1 call"
    if answer.get("payload") is not None:
        text = json.dumps(answer["payload"], indent=2, ensure_ascii=False)
        return f"{station} answered {message} ({how}):\n{text}"
    if answer.get("error"):
        return (
            f"{station} answered {message} with data that is no 2.0.1 response: {answer['error']}"
        )
    return f"{station} answered the DataTransfer carrying {message}: {answer.get('status')}"
