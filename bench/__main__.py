"""Run the benchmarks and print one table: ``python -m bench [ingest|delivery ...] [--quick]``.

Each benchmark is also runnable alone with all its options: ``python -m bench.ingest --help``,
``python -m bench.delivery --help``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import platform
import time

from . import delivery, ingest
from .common import exit_status, print_table
from .loadgen import tool

BENCHES = {"ingest": ingest, "delivery": delivery}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("only", nargs="*", choices=[*BENCHES, []], metavar="BENCH",
                   help=f"which to run ({', '.join(BENCHES)}; default: all)")
    p.add_argument("--quick", action="store_true", help="short runs (a smoke test, noisy figures)")
    a = p.parse_args()
    started = time.monotonic()
    print(f"hookyard benchmarks on {platform.node()}: Python {platform.python_version()},"
          f" load generator {tool()}")
    names = a.only or list(BENCHES)
    results = {}
    for name in names:
        mod = BENCHES[name]
        sub = argparse.ArgumentParser()
        mod.add_arguments(sub)
        opts = sub.parse_args([])
        if a.quick:
            _quick(name, opts)
        results[name] = mod.from_args(opts)
    for name in names:
        print_table(results[name], BENCHES[name].COLUMNS, name)
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    raise SystemExit(exit_status())


def _quick(name: str, opts: argparse.Namespace) -> None:
    if name == "ingest":
        opts.duration, opts.warmup, opts.rounds = 2.0, 0.5, 1
    else:
        opts.events, opts.single_events = 10_000, 1_000


if __name__ == "__main__":
    main()
