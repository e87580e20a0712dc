"""``hookyard dlq``: list, retry and discard dead letters from the command line (the same
actions as ``/api/dead-letters``, checked by :mod:`hookyard.operator_input`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from .cli import TIME_HELP, config_options, fail, main, stored_runtime, unknown_destination
from .errors import ConfigError, HookyardError

DLQ_DESTINATION_HELP = "Only this destination's dead letters"
DLQ_SINCE_HELP = f"Only dead letters that last failed at or after this time: {TIME_HELP}"
# control characters (C0, DEL, C1) as escapes: an event's messageId or userId is client data,
# and a CR, LF or escape sequence in it must not rewrite the operator's terminal
_ESCAPED = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def shown(value: Any) -> str:
    """``value`` for one line of a terminal: control characters escaped (``\\x0d``)."""
    return "" if value is None else str(value).translate(_ESCAPED)


@main.group()
def dlq() -> None:
    """Dead letters: deliveries that failed permanently or gave up."""


def _dlq_runtime(config_path: str | None, data_dir: str | None, destination: str | None) -> Any:
    try:
        rt = stored_runtime(config_path, data_dir, secrets_needed=False)
    except HookyardError as exc:
        fail(exc)
    if destination is not None and destination not in rt.destinations and not rt.db.read_sync(
        # a destination removed from the config may still have dead letters
        lambda c: c.execute("SELECT 1 FROM outbox WHERE destination = ? LIMIT 1",
                            (destination,)).fetchone()
    ):
        rt.close()
        fail(ConfigError(unknown_destination(rt, destination)))
    return rt


@dlq.command("list")
@config_options
@click.option("--destination", help=DLQ_DESTINATION_HELP)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1),
              help="At most this many, newest first")
def dlq_list(config_path: str | None, data_dir: str | None, destination: str | None, limit: int) -> None:
    """List dead letters, newest first (by when the delivery was queued)."""
    limit = min(limit, 2**63 - 2)  # SQLite's integers; SQL's LIMIT adds one to see if there is more
    rt = _dlq_runtime(config_path, data_dir, destination)
    sql = "SELECT id, destination, message_id, user_key, attempts, last_status, last_error" \
          " FROM outbox WHERE state = 'dead'"
    params: list[Any] = []
    if destination:
        sql += " AND destination = ?"
        params.append(destination)
    rows = rt.db.read_sync(
        lambda c: c.execute(sql + " ORDER BY id DESC LIMIT ?", [*params, limit + 1]).fetchall())
    if not rows:
        click.echo("no dead letters")
    for r in rows[:limit]:
        click.echo(f"{r['id']:>8}  {r['destination']:<16} {shown(r['message_id']):<38}"
                   f" user={shown(r['user_key'])}  attempts={r['attempts']}"
                   f" status={r['last_status'] or '-'}  {shown(r['last_error'])}")
    if len(rows) > limit:  # on stderr: a script reading the list gets the rows only
        click.echo(f"(more dead letters than --limit {limit}: list more with a larger --limit)",
                   err=True)
    rt.close()


def _dlq_action(action: str, config_path: str | None, data_dir: str | None,
                destination: str | None, since: str | None, ids: tuple[int, ...],
                every: bool) -> None:
    from .delivery import dead_letters
    from .operator_input import dead_letter_filter, retry_refusal

    try:
        destination, when, id_list = dead_letter_filter(
            action, destination, since, list(ids) or None, every, cli=True)
    except ValueError as exc:
        fail(exc)
    rt = _dlq_runtime(config_path, data_dir, destination)
    refusal = retry_refusal(destination, rt.destinations) if action == "retry" else None
    if refusal is not None:
        rt.close()
        fail(ConfigError(refusal))
    try:
        names = list(rt.destinations)
        found = rt.db.read_sync(lambda c: dead_letters.dead_ids(
            c, destination, when, id_list, configured=names if action == "retry" else None))
        count = sum(rt.db.write_sync(write)  # ingest goes on between the writes
                    for write in dead_letters.dead_letter_writes(action, found))
        left = (rt.db.read_sync(lambda c: dead_letters.dead_elsewhere(c, names, when, id_list))
                if action == "retry" else {})
    except HookyardError as exc:  # storage unavailable: a read-only file, a full disk
        fail(exc)
    finally:
        rt.close()
    noun = "dead letter" if count == 1 else "dead letters"
    click.echo(f"{action}: {count} {noun}" + (" queued again" if action == "retry" else " discarded"))
    if left:
        click.echo("left dead: " + ", ".join(f"{n} of {d}" for d, n in left.items())
                   + " (not in the config: no worker would deliver them; discard them, or add"
                   " the destination back and retry)")


def dlq_filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--all", "every", is_flag=True,
                      help="Every dead letter (discard refuses to run without a filter or this)")(fn)
    fn = click.option("--id", "ids", multiple=True, type=click.IntRange(1, 2**63 - 1),
                      help="Only this dead letter (its id in `dlq list`; repeatable)")(fn)
    fn = click.option("--since", help=DLQ_SINCE_HELP)(fn)
    fn = click.option("--destination", help=DLQ_DESTINATION_HELP)(fn)
    return fn


@dlq.command("retry")
@config_options
@dlq_filter_options
def dlq_retry(config_path: str | None, data_dir: str | None, destination: str | None,
              since: str | None, ids: tuple[int, ...], every: bool) -> None:
    """Queue dead letters for delivery again (all of them when no filter is given)."""
    _dlq_action("retry", config_path, data_dir, destination, since, ids, every)


@dlq.command("discard")
@config_options
@dlq_filter_options
def dlq_discard(config_path: str | None, data_dir: str | None, destination: str | None,
                since: str | None, ids: tuple[int, ...], every: bool) -> None:
    """Discard dead letters (kept for the record, never retried). Needs a filter, or --all."""
    _dlq_action("discard", config_path, data_dir, destination, since, ids, every)
