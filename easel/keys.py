"""``easel keys create|list|revoke``: manage API keys in the Redis that ``EASEL_*`` names.

``create`` prints the new key on stdout, alone, exactly once: Easel keeps only a keyed
hash of it, so it cannot be shown again. Its id, which ``list`` and ``revoke`` use, goes
to stderr with the rest of the note. Rates use Flask-Limiter's syntax (``60/minute``,
``5/second;1000/day``); both limits default to ``EASEL_DEFAULT_RATE_LIMIT`` and
``EASEL_DEFAULT_MAX_INFLIGHT`` as they are when the key is created.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a keys command runs, so `easel worker` needs no limits lib
    from shared.keys import KeyRecord, KeyStore
    from shared.settings import Settings


def add_key_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keys`` and its subcommands to the ``easel`` parser."""
    keys = commands.add_parser("keys", help="create, list or revoke API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="make a key and print it, once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--rate", help="requests per window, e.g. 60/minute")
    create.add_argument("--max-inflight", type=int, help="jobs queued or running at once")
    listing = actions.add_parser("list", help="every key's id, name, limits and state")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = actions.add_parser("revoke", help="refuse a key from its next request on")
    revoke.add_argument("id", help="the key id that `easel keys list` shows")


def run_key_command(args: argparse.Namespace) -> int:
    """Run one ``easel keys`` subcommand; the exit status."""
    from shared.jobs import connect_redis
    from shared.keys import KeyStore, NoKeySecret, UnknownKeyId
    from shared.settings import Settings

    settings = Settings()
    store = KeyStore(connect_redis(settings), settings)
    if args.keys_command == "create":
        try:
            return create(store, settings, args.name, args.rate, args.max_inflight)
        except NoKeySecret as exc:
            print(f"easel keys create: {exc}", file=sys.stderr)
            return 2
    if args.keys_command == "list":
        return show(store.all_keys(), as_json=args.json)
    try:
        record = store.revoke(args.id)
    except UnknownKeyId as exc:
        print(f"easel keys revoke: {exc.args[0]}", file=sys.stderr)
        return 1
    print(f"revoked {record.id} ({record.name}) at {stamp(record.revoked_at)}")
    return 0


def create(
    store: KeyStore, settings: Settings, name: str, rate: str | None, max_inflight: int | None
) -> int:
    """Make a key; print it on stdout and what to do with it on stderr."""
    from pydantic import ValidationError

    try:
        api_key, record = store.create(
            name,
            settings.default_rate_limit if rate is None else rate,
            settings.default_max_inflight if max_inflight is None else max_inflight,
        )
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"easel keys create: {reasons}", file=sys.stderr)
        return 2
    print(api_key)
    print(
        f"created key {record.id} ({record.name}, {record.rate}, "
        f"at most {record.max_inflight} in flight). This is the only time it is shown: "
        "store it now.",
        file=sys.stderr,
    )
    return 0


def show(records: list[KeyRecord], as_json: bool) -> int:
    """Print keys as a table, or as JSON lines; never the keys themselves (Easel lacks them)."""
    if as_json:
        for record in records:
            print(record.model_dump_json(exclude={"key_hash"}))
        return 0
    rows = [("ID", "NAME", "RATE", "MAX-INFLIGHT", "CREATED", "REVOKED")]
    rows += [
        (r.id, r.name, r.rate, str(r.max_inflight), stamp(r.created_at), stamp(r.revoked_at))
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def stamp(when: float | None) -> str:
    """A UTC timestamp for humans, or "-"."""
    return "-" if when is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
