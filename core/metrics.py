"""Prometheus metrics (``GET /metrics``), one registry per runtime.

Counters are updated on the hot path (ingest, delivery results); sizes (inbox, outbox by
state, retry queue depth) are read from the database when Prometheus scrapes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .delivery import outbox
from .errors import StorageUnavailable
from .sizes import unrouted_events

log = logging.getLogger("hookyard.metrics")

if TYPE_CHECKING:
    from .delivery.outbox import Outcome
    from .runtime import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


LIVE_STATES = ("pending", "inflight", "dead")
"""The outbox states every configured destination reports, 0 when it has none."""


class _SizeCollector(Collector):
    """Sizes read from the database at each scrape, through the runtime's
    :class:`hookyard.sizes.SizeCounter` (the slow whole-index counts are reused for a minute)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.failing = False  # the last scrape could not read the sizes (logged once)

    def collect(self) -> Iterable[Any]:
        mapper = getattr(getattr(self.rt.engine, "router", None), "mapper", None)
        if mapper is not None:  # see docs/delivery.md, "Where mapping runs"
            yield GaugeMetricFamily(
                "hookyard_map_process_up",
                "1 while the router's map process maps the events, 0 while the worker maps"
                " them itself (the helper is starting, or restarting after a failure)",
                value=1 if mapper.ready else 0)
        deliverer = getattr(self.rt.engine, "deliverer", None)
        if deliverer is not None:  # see docs/delivery.md, "Where deliveries are sent from"
            yield GaugeMetricFamily(
                "hookyard_deliver_process_up",
                "1 while the deliver process sends the requests of the destinations that allow"
                " it, 0 while the worker sends them itself (the helper is starting, or"
                " restarting after a failure)",
                value=1 if deliverer.ready else 0)
        workers = getattr(self.rt.engine, "workers", None)
        if workers:  # see docs/delivery.md, "A destination that fails every delivery"
            paused = GaugeMetricFamily(
                "hookyard_destination_paused", "1 while the destination is paused after failing"
                " every delivery (one delivery probes it now and then), else 0",
                labels=["destination"])
            for dest, worker in sorted(workers.items()):
                paused.add_metric([dest], 1 if worker.breaker.paused else 0)
            yield paused
        names = list(self.rt.destinations)
        try:
            (inbox, states, retrying), unrouted, oldest = self.rt.db.read_sync(
                lambda conn: (self.rt.sizes.read(conn, names), unrouted_events(conn),
                              outbox.oldest_pending(conn, names)))
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because of the database
            if not self.failing:  # once per outage, not every scrape; a traceback for a bug
                log.warning("metrics: the storage gauges are left out: reading the sizes"
                            " failed: %s", exc, exc_info=not isinstance(exc, StorageUnavailable))
            self.failing = True
            return
        if self.failing:
            log.info("metrics: the storage gauges are back")
            self.failing = False
        yield GaugeMetricFamily("hookyard_inbox_events", "Events stored in the inbox", value=inbox)
        yield GaugeMetricFamily(
            "hookyard_unrouted_events", "Inbox events not routed to the destinations yet",
            value=unrouted)
        rows = GaugeMetricFamily(
            "hookyard_outbox_rows", "Outbox rows by destination and state",
            labels=["destination", "state"],
        )
        # every configured destination has a sample for each live state and its retry depth,
        # 0 included: an alert on them sees 0, not "no data"
        counts = {(dest, state): count for dest, state, count in states}
        for dest in names:
            for state in LIVE_STATES:
                counts.setdefault((dest, state), 0)
        for (dest, state), count in sorted(counts.items()):
            rows.add_metric([dest, state], count)
        yield rows
        depth = GaugeMetricFamily(
            "hookyard_retry_queue_depth", "Deliveries waiting for a retry", labels=["destination"]
        )
        for dest in sorted({*names, *retrying}):
            depth.add_metric([dest], retrying.get(dest, 0))
        yield depth
        age = GaugeMetricFamily(
            "hookyard_oldest_pending_seconds", "Seconds since the oldest pending delivery of"
            " the destination was queued (0: none pending): how stale its backlog is",
            labels=["destination"])
        now = time.time()
        for dest in names:
            age.add_metric([dest], max(0.0, now - oldest[dest]) if dest in oldest else 0.0)
        yield age


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
        self.refused = Counter(
            "hookyard_events_refused", "Events refused alone in an accepted request (invalid,"
            " too large)", ["source"], registry=self.registry,
        )
        self.deliveries = Counter(
            "hookyard_deliveries", "Delivery attempts", ["destination", "outcome"],
            registry=self.registry,
        )
        self.admin_tokens_refused = Counter(
            "hookyard_admin_tokens_refused", "Wrong admin tokens given to /api/* or the"
            " dashboard login", ["surface"], registry=self.registry,
        )
        self.latency = Histogram(
            "hookyard_delivery_latency_seconds", "Delivery attempt latency", ["destination"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.registry.register(_SizeCollector(rt))
        self._ingest_children: dict[str, tuple[Any, Any]] = {}

    def ingest_ok(self, source: str, count: int, refused: int = 0) -> None:
        """An accepted request: ``count`` events committed, ``refused`` refused alone."""
        # labels() costs ~4 us per call (lock, tuple validation): keep each source's children
        children = self._ingest_children.get(source)
        if children is None:
            children = (self.received.labels(source), self.accepted.labels(source))
            self._ingest_children[source] = children
        children[0].inc(count + refused)
        children[1].inc(count)
        if refused:
            self.refused.labels(source).inc(refused)

    def ingest_refused(self, source: str | None, status: int) -> None:
        self.rejected.labels(source or "", str(status)).inc()

    def observe(self, destination: str, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            if o.sent:  # a delivery held back was not attempted
                self.deliveries.labels(destination, o.outcome).inc()
        if outcomes:
            self.latency.labels(destination).observe(outcomes[0].latency_ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
