"""``csms run``, ``csms gateway``, ``csms manager``, ``csms api``, ``csms webhooks``: the
long-running processes."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from cli import processes
from cli.common import add_setting_flags
from csms.config import Settings

__all__ = ["COMMANDS", "add_commands", "run"]

COMMANDS = {
    "run": "gateway + manager + operator API in one process",
    "gateway": "a gateway instance (WebSocket ⇄ MQTT)",
    "manager": "a manager instance (MQTT shared subscription)",
    "api": "an operator HTTP API instance (needs a broker; Redis for shared state)",
    "webhooks": "webhook dispatcher and delivery workers (needs Redis)",
}


def add_commands(commands: Any) -> None:
    for name, help_text in COMMANDS.items():
        add_setting_flags(commands.add_parser(name, help=help_text))


def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "run":
        asyncio.run(processes.run_all_in_one(settings))
    elif args.command == "gateway":
        asyncio.run(processes.run_gateway(settings))
    elif args.command == "api":
        asyncio.run(processes.run_api(settings))
    elif args.command == "webhooks":
        asyncio.run(processes.run_webhooks(settings))
    else:
        asyncio.run(processes.run_manager(settings))
    return 0
