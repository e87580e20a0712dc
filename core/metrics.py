"""Prometheus metrics (``GET /metrics``), one registry per runtime.

Counters are updated on the hot path (ingest, delivery results); sizes (inbox, outbox by
state, retry queue depth) are read from the database when Prometheus scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .delivery import outbox

if TYPE_CHECKING:
    from .delivery.outbox import Outcome
    from .runtime import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


FINISHED_COUNTS_SECONDS = 60.0  # how long the counts that read whole indexes are reused...
SLOW_COUNT_SECONDS = 0.05  # ...once they take longer than this (below, every scrape counts)


class _SizeCollector(Collector):
    """Sizes read from the database at each scrape. The live outbox states (pending, in
    flight, dead) and the retry queue are counted every time, through index ranges that grow
    with the queue only; the inbox and the finished outbox rows need a whole index each
    (~100 ms at 2 million rows), so once counting them takes over 50 ms they are refreshed
    at most once a minute."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        # (when counted, inbox events, finished outbox rows by destination and state, seconds taken)
        self.finished: tuple[float, int, list[tuple[str, str, int]], float] | None = None

    def collect(self) -> Iterable[Any]:
        names = list(self.rt.destinations)
        cached = self.finished
        started = time.monotonic()
        stale = (cached is None or cached[3] < SLOW_COUNT_SECONDS
                 or started - cached[0] > FINISHED_COUNTS_SECONDS)

        def read(conn: Any) -> tuple[int | None, list[Any], dict[str, int]]:
            inbox = conn.execute("SELECT count(*) FROM inbox").fetchone()[0] if stale else None
            return (inbox, *outbox.counts(conn, names, finished=stale))

        try:
            fresh_inbox, counted, retrying = self.rt.db.read_sync(read)
        except Exception:  # noqa: BLE001 - a scrape must not fail because of the database
            return
        if stale:
            done = [c for c in counted if c[1] not in outbox.LIVE]
            took = time.monotonic() - started
            cached = self.finished = (started, int(fresh_inbox or 0), done, took)
            states = counted
        else:
            assert cached is not None
            states = cached[2] + counted
        inbox = cached[1]
        yield GaugeMetricFamily("hookyard_inbox_events", "Events stored in the inbox", value=inbox)
        rows = GaugeMetricFamily(
            "hookyard_outbox_rows", "Outbox rows by destination and state",
            labels=["destination", "state"],
        )
        for dest, state, count in states:
            rows.add_metric([dest, state], count)
        yield rows
        depth = GaugeMetricFamily(
            "hookyard_retry_queue_depth", "Deliveries waiting for a retry", labels=["destination"]
        )
        for dest, count in retrying.items():
            depth.add_metric([dest], count)
        yield depth


class Metrics:
    """The metrics of one runtime."""

    def __init__(self, rt: Runtime) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            "hookyard_events_received", "Events in ingest requests", ["source"],
            registry=self.registry,
        )
        self.accepted = Counter(
            "hookyard_events_accepted", "Events committed to the inbox", ["source"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "hookyard_requests_rejected", "Ingest requests refused", ["source", "status"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "hookyard_deliveries", "Delivery attempts", ["destination", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hookyard_delivery_latency_seconds", "Delivery attempt latency", ["destination"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.registry.register(_SizeCollector(rt))
        self._ingest_children: dict[str, tuple[Any, Any]] = {}

    def ingest_ok(self, source: str, count: int) -> None:
        # labels() costs ~4 us per call (lock, tuple validation): keep each source's children
        children = self._ingest_children.get(source)
        if children is None:
            children = (self.received.labels(source), self.accepted.labels(source))
            self._ingest_children[source] = children
        children[0].inc(count)
        children[1].inc(count)

    def ingest_refused(self, source: str | None, status: int) -> None:
        self.rejected.labels(source or "", str(status)).inc()

    def observe(self, destination: str, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            self.deliveries.labels(destination, o.outcome).inc()
        if outcomes:
            self.latency.labels(destination).observe(outcomes[0].latency_ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
