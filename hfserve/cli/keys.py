"""``hfserve keys``: create, list and revoke API keys in the keys file a server reads."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hfserve.core.keystore import ApiKey, KeyStore
from hfserve.errors import UnavailableError

__all__ = ["keys_app", "parse_duration"]

keys_app = typer.Typer(
    help="Create, list and revoke API keys (a running server picks changes up within a second).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
KeysFileOption = Annotated[
    Path | None,
    typer.Option(
        "--keys-file",
        envvar="HFSERVE_KEYS_FILE",
        help="API keys file. Default: $XDG_CONFIG_HOME/hfserve/keys.json.",
    ),
]


def parse_duration(text: str) -> float:
    """Parse ``30d``, ``12h``, ``90m`` or ``3600s`` into seconds (must be positive).

    Raises:
        ValueError: the text is not such a duration.
    """
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(
            f"not a duration: {text!r} (use a number and a unit: 30d, 12h, 90m, 3600s)"
        )
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return float(seconds)


def _store(keys_file: Path | None) -> KeyStore:
    from hfserve.paths import default_keys_file

    return KeyStore(keys_file.expanduser() if keys_file is not None else default_keys_file())


def _limit_text(value: int | None) -> str:
    if value is None:
        return "default"
    return "unlimited" if value == 0 else str(value)


def _time_text(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


@keys_app.command("create")
def create_command(
    name: Annotated[str, typer.Option("--name", help="A label: who or what uses the key.")],
    rpm: Annotated[
        int | None,
        typer.Option(min=0, help="Requests per minute; 0 = unlimited; unset = server default."),
    ] = None,
    tpm: Annotated[
        int | None,
        typer.Option(min=0, help="Tokens per minute; 0 = unlimited; unset = server default."),
    ] = None,
    expires_in: Annotated[
        str | None,
        typer.Option(
            "--expires-in", help="Lifetime such as 30d, 12h, 90m or 3600s; unset = never."
        ),
    ] = None,
    json_output: JsonOption = False,
    keys_file: KeysFileOption = None,
) -> None:
    """Create an API key and print it once: only its hash is stored."""
    expires_at: float | None = None
    if expires_in is not None:
        try:
            expires_at = time.time() + parse_duration(expires_in)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--expires-in'") from None
    store = _store(keys_file)
    record, plaintext = store.create(name, rpm=rpm, tpm=tpm, expires_at=expires_at)
    if json_output:
        payload: dict[str, Any] = {"key": plaintext, **record.to_public(time.time())}
        typer.echo(json.dumps(payload, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape

    # The key alone goes to stdout (so `KEY=$(hfserve keys create ...)` works); the rest is
    # for the human and goes to stderr.
    err = Console(stderr=True)
    err.print(
        f"Created API key [bold]{record.id}[/bold] ({escape(record.name)}): "
        f"rpm {_limit_text(record.rpm)}, tpm {_limit_text(record.tpm)}, "
        f"expires {_time_text(record.expires_at)}."
    )
    err.print(
        "[bold yellow]Save this key now: it will not be shown again.[/bold yellow] "
        f"Only its hash is stored in {escape(str(store.path))}."
    )
    typer.echo(plaintext)


@keys_app.command("list")
def list_command(json_output: JsonOption = False, keys_file: KeysFileOption = None) -> None:
    """List API keys (ids, names, limits, state); keys themselves are never shown."""
    store = _store(keys_file)
    records = store.list_keys()
    now = time.time()
    if json_output:
        typer.echo(json.dumps([r.to_public(now) for r in records], indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if not records:
        Console(stderr=True).print(f"No API keys in {escape(str(store.path))}.")
        return
    table = Table(title=f"API keys in {escape(str(store.path))}", title_justify="left")
    # Ids are what `revoke` takes, so they are never wrapped or cut; created_at is in --json.
    table.add_column("id", no_wrap=True, min_width=16)
    table.add_column("name")
    table.add_column("key", no_wrap=True)
    table.add_column("rpm")
    table.add_column("tpm")
    table.add_column("expires")
    table.add_column("state", no_wrap=True)
    for record in records:
        table.add_row(*_row(record, now))
    Console().print(table)


def _row(record: ApiKey, now: float) -> list[str]:
    state = record.state(now)
    colour = {"active": "green", "revoked": "red", "expired": "yellow"}[state]
    from rich.markup import escape

    return [
        record.id,
        escape(record.name),
        f"…{record.last4}",
        _limit_text(record.rpm),
        _limit_text(record.tpm),
        _time_text(record.expires_at),
        f"[{colour}]{state}[/{colour}]",
    ]


async def _publish_revocation(redis_url: str, key_id: str) -> None:
    from hfserve.core.redis_backends import RedisConnection, RedisRevocations

    # A person waits on this, not a request: a few seconds beat the server's 50 ms budget.
    connection = RedisConnection(redis_url, timeout=5.0)
    try:
        await RedisRevocations(connection).publish(key_id)
    finally:
        await connection.aclose()


@keys_app.command("revoke")
def revoke_command(
    key_id: Annotated[
        str, typer.Argument(help="The key's id (key_...), as `hfserve keys list` shows it.")
    ],
    json_output: JsonOption = False,
    keys_file: KeysFileOption = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            envvar="HFSERVE_REDIS_URL",
            help="Also publish the revocation to this Redis, for replicas with their own keys file.",
        ),
    ] = None,
) -> None:
    """Revoke an API key; running servers refuse it within a second."""
    store = _store(keys_file)
    record = store.revoke(key_id)
    if redis_url:
        try:
            import asyncio

            asyncio.run(_publish_revocation(redis_url, record.id))
        except UnavailableError as exc:
            raise UnavailableError(
                f"revoked {record.id} in {store.path}, but publishing it to Redis failed "
                f"({exc.message}); replicas with their own keys file still accept it: "
                "run this command again",
                retry_after=exc.retry_after,
            ) from exc
    if json_output:
        typer.echo(json.dumps(record.to_public(time.time()), indent=2))
        return
    typer.echo(f"Revoked API key {record.id} ({record.name}).")
