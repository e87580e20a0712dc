"""``hookyard replay`` and ``hookyard preview``: a destination's filter and mapping applied to
stored events again (mapping changes reach past syncs), or to one event without sending it."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from .cli import (
    TIME_HELP,
    config_options,
    fail,
    load_cli_config,
    main,
    stored_runtime,
    unknown_destination,
)
from .errors import ConfigError, HookyardError
from .serving import run_loop


@main.command()
@config_options
@click.option("--source", required=True, help="Source whose stored events are replayed")
@click.option("--destination", help="Only this destination (default: every connected one)")
@click.option("--since", help=f"Received at or after this time: {TIME_HELP}")
@click.option("--until", help=f"Received before this time: {TIME_HELP}")
@click.option("--all", "every", is_flag=True,
              help="From the first stored event of the source (instead of --since)")
def replay(config_path: str | None, data_dir: str | None, source: str, destination: str | None,
           since: str | None, until: str | None, every: bool) -> None:
    """Map stored events again and queue their deliveries (mapping changes reach the past).

    Say where the replay starts: --since TIME, or --all for every stored event of the
    source."""
    from .delivery.replay import Replayed, count_events, open_end, routed_until
    from .delivery.replay import replay as do_replay
    from .operator_input import replay_start, window

    try:
        replay_start(since, every, cli=True)
        window(since, until)  # a bad time or window stops here, before the database is opened
        rt = stored_runtime(config_path, data_dir)
        if source not in rt.sources:
            rt.close()
            raise ConfigError(f"no source named {source!r}; configured: {', '.join(rt.sources) or 'none'}")
        if destination is not None and destination not in rt.destinations:
            rt.close()
            raise ConfigError(unknown_destination(rt, destination))

        end = open_end(since, until)  # one end for the count and the replay

        async def run() -> Replayed:
            upto = await routed_until(rt)  # one bound too
            total = await count_events(rt, source, since, end, upto)
            if not sys.stderr.isatty():  # a log or a pipe: a line every 10 s (a bar shows
                # nothing there, and a long replay looked stuck; scale audit)
                return await do_replay(rt, source, destination, since, end,
                                       _progress_lines(source, total), upto)
            with click.progressbar(length=total, label=f"replaying {source}", file=sys.stderr) as bar:
                return await do_replay(rt, source, destination, since, end, bar.update, upto)

        done = run_loop(run())
        rt.close()
    except (HookyardError, ValueError) as exc:
        fail(exc)
    click.echo(done.summary())
    if done.failed:  # dead letters made: a script should notice
        sys.exit(1)


def _progress_lines(source: str, total: int, every: float = 10.0) -> Callable[[int], None]:
    """A replay's progress as a line on stderr every ``every`` seconds."""
    state = {"done": 0, "said": time.monotonic()}

    def update(count: int) -> None:
        state["done"] += count
        if time.monotonic() - state["said"] >= every:
            state["said"] = time.monotonic()
            click.echo(f"replaying {source}: {state['done']} of {total} events", err=True)

    return update


@main.command()
@config_options
@click.option("--destination", required=True, help="Destination whose filter and mapping are applied")
@click.option("--file", "event_file", type=click.File("rb"), default="-", show_default=True,
              help="A Segment event as JSON ('-' reads standard input)")
@click.option("--source", help="The source the event comes from (its honor_integrations applies)")
def preview(config_path: str | None, data_dir: str | None, destination: str, event_file: Any,
            source: str | None) -> None:
    """Show what a destination would send for an event, without sending anything.

    Prints the same JSON as POST /api/destinations/{name}/preview.
    """
    from .delivery.preview import preview_cli
    from .runtime import Runtime

    try:  # nothing is created: no data dir, no generated write key or admin token
        rt = Runtime.build(load_cli_config(config_path, data_dir=data_dir, create=False), prepare=False)
        data = event_file.read()
        name = getattr(event_file, "name", "-")
        if not data.strip() and name not in ("-", "<stdin>"):
            raise ConfigError(f"{name} is empty: it must hold the event's JSON")
        with contextlib.redirect_stdout(sys.stderr):  # a plugin's print: not into the JSON
            answer = preview_cli(rt, destination, data, source)
        click.echo(answer)
    except HookyardError as exc:
        fail(exc)
