"""``csms`` command line: the parser and the dispatch to one module per command group.

    csms run        gateway + manager + operator API in one process (embedded default without
                    broker/Redis; the API on api_host:api_port, see docs/api.md)
    csms gateway    one gateway instance (needs --broker-url)
    csms manager    one manager instance (needs --broker-url; --redis-url for shared state)
    csms webhooks   webhook dispatcher and delivery workers (needs --redis-url)
    csms api        one operator API instance (needs --broker-url; --redis-url for shared state)
    csms station add ID [--registration Accepted|Pending|Rejected] [--profile 0-3]
                        [--password P | --password - | --generate-password]
                        [--certificate-identity CN] [--versions ocpp1.6,ocpp2.0.1]
    csms station rotate-password ID [--wait SECONDS]
    csms station list [--online|--offline] [--registration R] [--prefix P] [--limit N] [--json]
    csms station show ID [--json]
    csms station rules ID [--allow-station-call A] [--deny-station-call A] [--allow-csms-call A]
                          [--deny-csms-call A] [--clear] [--json]
    csms rules defaults VERSION [the same flags]
    csms call STATION ACTION ['{json}' | @file.json | -] [--timeout S] [--no-wait] [--json]
    csms call-status CALL_ID [--wait S] [--json]
    csms iso15118 STATION MESSAGE ['{json}' | @file.json | -] [--timeout S] [--no-wait] [--json]
    csms tx list [--station S] [--token T] [--active|--ended] [--since ISO] [--until ISO]
                 [--limit N] [--json]
    csms tx show STATION TX [--json]
    csms tx export [filters as tx list] [-o FILE]
    csms webhook add URL --secret S [--events a,b] [--station X] / list / show ID / rm ID /
                 test ID / deliveries ID [--json]
    csms password generate [--version ocpp1.6|ocpp2.0.1] [--length N]
    csms password hash [--version ...] [--authorization-key]   (password on stdin)
    csms api-key create NAME [--scope read|operate|admin]   (prints the key once)
    csms api-key list [--json]
    csms api-key revoke KEY_ID
    csms simulate [--url WS] [--stations N] [--version ocpp2.0.1|ocpp1.6|mix]
                  [--scenario sessions|boot|storm|idle] [--processes K] [--json FILE]
    csms token add ID [--status ...] [--expiry ISO [--allow-past-expiry]] [--group ID]
                      [--type ISO14443|eMAID|...]

Every setting can also come from a TOML file (--config) or ``CSMS_*`` environment variables;
see :mod:`csms.config`. ``station list/show``, ``call``, ``call-status`` and ``tx`` talk to the
operator API over HTTP instead (``--api-url``/``CSMS_API_URL``, ``--api-key``/``CSMS_API_KEY``;
exit statuses in :mod:`cli.api_client`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from cli import (
    api_client,
    api_key,
    call,
    events,
    iso15118,
    password,
    rules,
    serve,
    simulate,
    station,
    token,
    tx,
    webhook,
)
from cli.common import CommandError, describe, settings_from
from csms.logs import configure_logging
from services.interfaces import StoreUnavailable

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csms", description="OCPP 1.6 / 2.0.1 CSMS")
    commands = parser.add_subparsers(dest="command", required=True)
    serve.add_commands(commands)
    station.add_commands(commands)
    password.add_commands(commands)
    token.add_commands(commands)
    api_key.add_commands(commands)
    call.add_commands(commands)
    iso15118.add_commands(commands)
    tx.add_commands(commands)
    webhook.add_commands(commands)
    events.add_commands(commands)
    rules.add_commands(commands)
    simulate.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "password":
            return password.run(args)  # needs no settings
        if getattr(args, "api_command", None) is not None:
            return api_client.run(args.api_command, args)  # the operator API, over HTTP
        if args.command == "simulate":
            return simulate.run(args)  # a client of any CSMS: no settings either
        try:
            settings = settings_from(args)
        except ValidationError as exc:
            print(f"csms: invalid settings:\n{describe(exc)}", file=sys.stderr)
            return 2
        except FileNotFoundError as exc:
            print(f"csms: {exc}", file=sys.stderr)
            return 2
        configure_logging(settings.log_format, settings.log_level)
        if args.command in serve.COMMANDS:
            return serve.run(settings, args)
        if args.command == "station":
            return station.run(settings, args)
        if args.command == "api-key":
            return api_key.run(settings, args)
        return token.run(settings, args)
    except CommandError as exc:
        print(f"csms: {exc}", file=sys.stderr)
        return exc.exit_code
    except StoreUnavailable as exc:
        print(f"csms: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        interrupted = args.command == "password" or getattr(args, "api_command", None)
        return 130 if interrupted else 0  # servers stop on Ctrl-C; commands are cut short
    except OSError as exc:
        print(f"csms: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
