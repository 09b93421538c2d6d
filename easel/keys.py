"""``easel keys create|list|revoke|weight|webhook-secret``: manage API keys in the Redis
that ``EASEL_*`` names.

``create`` prints the new key on stdout, alone, exactly once: Easel keeps only a keyed
hash of it, so it cannot be shown again. Its id, which the other commands use, goes to
stderr with the rest of the note, and so does the key's webhook signing secret (``whsec_``).
That one Easel can derive again (the deliverer must, to sign): ``webhook-secret ID`` prints
it on stdout, and ``webhook-secret --rotate ID`` replaces it first.

Rates use Flask-Limiter's syntax (``60/minute``, ``5/second;1000/day``); both limits default
to ``EASEL_DEFAULT_RATE_LIMIT`` and ``EASEL_DEFAULT_MAX_INFLIGHT`` as they are when the key
is created. ``--weight N`` (default 1) is the key's share of its GPU class's job starts while
other keys' jobs wait too; ``weight ID N`` changes it for the jobs submitted from then on.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a keys command runs, so `easel worker` needs no limits lib
    from pydantic import ValidationError

    from shared.keys import KeyRecord, KeyStore
    from shared.settings import Settings


def add_key_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keys`` and its subcommands to the ``easel`` parser."""
    keys = commands.add_parser("keys", help="create, list or revoke API keys; webhook secrets")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="make a key and print it, once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--rate", help="requests per window, e.g. 60/minute")
    create.add_argument("--max-inflight", type=int, help="jobs queued or running at once")
    create.add_argument("--weight", type=int, default=1,
                        help="share of job starts while other keys wait too (1-1000)")  # fmt: skip
    listing = actions.add_parser("list", help="every key's id, name, limits and state")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    weight = actions.add_parser("weight", help="change a key's fair-share weight")
    weight.add_argument("id", help="the key id that `easel keys list` shows")
    weight.add_argument("weight", type=int, help="its share of job starts (1-1000)")
    revoke = actions.add_parser("revoke", help="refuse a key from its next request on")
    revoke.add_argument("id", help="the key id that `easel keys list` shows")
    secret = actions.add_parser("webhook-secret", help="print the secret a key's webhooks use")
    secret.add_argument("--rotate", action="store_true", help="replace it first; the old one "
                        "stops verifying from the next delivery on")  # fmt: skip
    secret.add_argument("id", help="the key id that `easel keys list` shows")


def run_key_command(args: argparse.Namespace) -> int:
    """Run one ``easel keys`` subcommand; the exit status."""
    from pydantic import ValidationError

    from shared.jobs import connect_redis
    from shared.keys import BOOTSTRAP_ID, KeyStore, NoKeySecret, UnknownKeyId
    from shared.settings import Settings

    settings = Settings()
    store = KeyStore(connect_redis(settings), settings)
    try:
        if args.keys_command == "create":
            return create(store, settings, args)
        if args.keys_command == "list":
            return show(store.all_keys(), as_json=args.json)
        if args.keys_command == "webhook-secret":
            return webhook_secret(store, args.id, args.rotate)
        if args.id == BOOTSTRAP_ID:
            raise UnknownKeyId(
                "the bootstrap key is EASEL_BOOTSTRAP_API_KEY, not a stored key: to revoke it, "
                "unset that variable (or give it a new value) and restart the API; its weight "
                "is EASEL_BOOTSTRAP_WEIGHT"
            )
        if args.keys_command == "weight":
            record = store.set_weight(args.id, args.weight)
            print(f"key {record.id} ({record.name}) now has weight {record.weight}")
            return 0
        record = store.revoke(args.id)
    except ValidationError as exc:
        print(f"easel keys {args.keys_command}: {reasons(exc)}", file=sys.stderr)
        return 2
    except NoKeySecret as exc:
        print(f"easel keys {args.keys_command}: {exc}", file=sys.stderr)
        return 2
    except UnknownKeyId as exc:
        print(f"easel keys {args.keys_command}: {exc.args[0]}", file=sys.stderr)
        return 1
    print(f"revoked {record.id} ({record.name}) at {stamp(record.revoked_at)}")
    return 0


def reasons(exc: ValidationError) -> str:
    """A validation error in one line, field by field."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def create(store: KeyStore, settings: Settings, args: argparse.Namespace) -> int:
    """Make a key; print it on stdout and what to do with it on stderr (a ValidationError
    propagates: the caller prints it)."""
    rate, max_inflight = args.rate, args.max_inflight
    api_key, record = store.create(
        args.name,
        settings.default_rate_limit if rate is None else rate,
        settings.default_max_inflight if max_inflight is None else max_inflight,
        args.weight,
    )
    print(api_key)
    print(
        f"created key {record.id} ({record.name}, {record.rate}, "
        f"at most {record.max_inflight} in flight, weight {record.weight}). "
        "This is the only time it is shown: "
        "store it now.\n"
        f"Its webhooks are signed with {store.webhook_secret(record)} (give it to the key's "
        f"owner; `easel keys webhook-secret {record.id}` shows it again).",
        file=sys.stderr,
    )
    return 0


def webhook_secret(store: KeyStore, key_id: str, rotate: bool) -> int:
    """Print a key's webhook secret on stdout, replaced first if ``rotate``."""
    from shared.keys import BOOTSTRAP_ID, UnknownKeyId

    if key_id == BOOTSTRAP_ID:
        raise UnknownKeyId("the bootstrap key's webhook secret is EASEL_WEBHOOK_SECRET")
    if rotate:
        secret, record = store.rotate_webhook_secret(key_id)
        note = "its old secret no longer verifies: deliveries from now on, retries too, use this"
    else:
        record = store.get(key_id)
        secret, note = store.webhook_secret(record), "its webhooks are signed with this"
    print(secret)
    print(f"key {record.id} ({record.name}): {note}", file=sys.stderr)
    return 0


def show(records: list[KeyRecord], as_json: bool) -> int:
    """Print keys as a table, or as JSON lines; never the keys themselves (Easel lacks them)."""
    if as_json:
        for record in records:
            print(record.model_dump_json(exclude={"key_hash", "webhook_nonce"}))
        return 0
    rows = [("ID", "NAME", "RATE", "MAX-INFLIGHT", "WEIGHT", "CREATED", "REVOKED")]
    rows += [
        (r.id, r.name, r.rate, str(r.max_inflight), str(r.weight), stamp(r.created_at),
         stamp(r.revoked_at))
        for r in records
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def stamp(when: float | None) -> str:
    """A UTC timestamp for humans, or "-"."""
    return "-" if when is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
