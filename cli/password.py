"""``csms password``: generate and hash station passwords (no settings, no stores)."""

from __future__ import annotations

import argparse
from typing import Any

from cli.common import OCPP_VERSIONS, CommandError, read_secret

__all__ = ["add_commands", "run"]


def add_commands(commands: Any) -> None:
    """The ``password`` command group."""
    password = commands.add_parser("password", help="station passwords (HTTP Basic auth)")
    password_commands = password.add_subparsers(dest="password_command", required=True)
    generate = password_commands.add_parser(
        "generate", help="print a random password (default: valid for 1.6 and 2.0.1)"
    )
    generate.add_argument("--version", choices=list(OCPP_VERSIONS))
    generate.add_argument("--length", type=int, help="characters (1.6: 16-20, 2.0.1: 16-40)")
    hash_command = password_commands.add_parser(
        "hash",
        help="read a password on stdin, print its hash (for password_hash in [[stations]])",
    )
    hash_command.add_argument(
        "--version", choices=list(OCPP_VERSIONS), help="check the password against its rules"
    )
    hash_command.add_argument(
        "--authorization-key",
        action="store_true",
        help="the input is an OCPP 1.6 AuthorizationKey (hex); hash the password it encodes",
    )


def run(args: argparse.Namespace) -> int:
    if args.password_command == "generate":
        _password_generate(args)
    else:
        _password_hash(args)
    return 0


def _password_generate(args: argparse.Namespace) -> None:
    from csms.credentials import (
        OCPP16_KEY_MAX_BYTES,
        OCPP16_KEY_MIN_BYTES,
        OCPP201_PASSWORD_MAX,
        OCPP201_PASSWORD_MIN,
        generate_password,
    )

    # Without --version: 1.6 rules, which give a password 2.0.1 accepts too.
    version = args.version or "ocpp1.6"
    low, high = (
        (OCPP16_KEY_MIN_BYTES, OCPP16_KEY_MAX_BYTES)
        if version == "ocpp1.6"
        else (OCPP201_PASSWORD_MIN, OCPP201_PASSWORD_MAX)
    )
    length = args.length if args.length is not None else high
    if not low <= length <= high:
        what = version if args.version else "a password for both versions"
        raise CommandError(f"{what} has {low}-{high} characters, not {length}")
    print(generate_password(length, version=version))


def _password_hash(args: argparse.Namespace) -> None:
    from csms.credentials import (
        check_password,
        hash_password,
        password_from_authorization_key,
    )

    if args.authorization_key:
        try:
            password = password_from_authorization_key(read_secret("AuthorizationKey: ").strip())
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    else:
        password = read_secret("password: ")
        versions = [args.version] if args.version else list(OCPP_VERSIONS)
        problems = []
        for version in versions:
            try:
                check_password(password, version=version)
            except ValueError as exc:
                problems.append(f"{version}: {exc}")
        if len(problems) == len(versions):
            raise CommandError("password not usable: " + "; ".join(problems))
    print(hash_password(password))
