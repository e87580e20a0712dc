"""The delivery engine: the router task, one worker per destination, and maintenance.

The router (:mod:`.router`) turns committed inbox events into outbox rows; each destination's
:class:`~.worker.DestinationWorker` delivers them (retry policy in :mod:`.retry`); every 30 s
expired leases are recovered and finished rows past retention are purged. ``hookyard serve``
runs the engine beside the HTTP server, ``hookyard worker`` runs it alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from .. import retention
from ..errors import StorageUnavailable
from ..logs import log_failure
from . import outbox, router
from .deliver_process import DeliverProcess
from .map_process import MapProcess
from .retry import backoff
from .scan import IDLE_POLL
from .worker import DestinationWorker

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["Engine", "DestinationWorker", "backoff"]
log = logging.getLogger("hookyard.delivery")
MAINTENANCE_SECONDS = 30.0  # lease recovery and retention purge
HELPER_CHECK_SECONDS = 5.0  # how often a deliver process that is down is started again
MAX_PURGE_ROUNDS = 100  # purge batches per maintenance run
PURGE_PAUSE = 0.02  # seconds between two of them: ingest's commits go first
INBOX_RESCAN_SECONDS = 3600.0  # how often the inbox purge looks again at events it kept


class Engine:
    """Runs the router and every destination worker inside the server (or ``hookyard worker``)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.workers = {name: DestinationWorker(rt, d) for name, d in rt.destinations.items()}
        self.route_wake = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.stopping = False
        self.observers: list[Any] = []
        self._maintain_at = time.monotonic() + MAINTENANCE_SECONDS
        self.router = router.Router(rt, mapper=MapProcess.wanted(rt))
        self.deliverer = DeliverProcess.wanted(rt)
        if self.deliverer is not None:
            for name in self.deliverer.destinations:
                self.workers[name].deliverer = self.deliverer
        # the inbox purge's position: events up to it were looked at (those it kept are still
        # referred to by the outbox, and are looked at again from 0 every INBOX_RESCAN_SECONDS,
        # or as soon as a pass has ended when outbox rows were purged since it began)
        self.inbox_scan = 0
        self.inbox_rescan_at = 0.0
        self.inbox_pass_ended = False
        self.outbox_purged = False
        self.purge_capped = False  # the last maintenance run stopped at a cap: run again soon
        # where the outbox purge's next window begins, per destination and state, past rows
        # that finished recently though made long ago (retention.purge_outbox)
        self.purge_positions: dict[tuple[str, str], int] = {}
        rt.engine = self

    def notify(self) -> None:
        """Tell the router that new events were committed."""
        self.route_wake.set()

    def observe(self, destination: str, outcomes: list[outbox.Outcome]) -> None:
        for fn in self.observers:
            fn(destination, outcomes)

    async def start(self, wait_for_helpers: bool = False) -> None:
        """Start the router, the workers and maintenance. ``wait_for_helpers`` (``hookyard
        worker``, which has no requests to take meanwhile): first start the map process and
        the deliver process and wait for both (up to 10 s), so that routing and deliveries
        start where they are cheapest, and the helpers' start-up (~0.4 s of CPU each: imports,
        plugins) does not compete with the first deliveries; ``serve`` starts at once, maps
        in-process until the map process is ready, and delivers once the deliver process is
        (:meth:`.worker.DestinationWorker._held`)."""
        names = list(self.workers)
        try:
            recovered = await self.rt.db.write(lambda c: outbox.recover_leases(c, names))
        except StorageUnavailable as exc:  # a full disk, a held lock: start all the same (the
            # maintenance loop recovers expired leases), answering 503 until it mends
            log.warning("could not recover leased deliveries at start-up (%s): maintenance will",
                        exc)
            recovered = 0
        if recovered:
            log.info("recovered %d deliveries leased by a stopped process", recovered)
        try:  # destinations failing when the last process stopped are probed before the rest,
            # paused since their failures began (a restart must not start the clock of giving
            # up waiting deliveries again: re-check)
            retrying = await self.rt.db.read(lambda c: {
                n: outbox.failing_since(c, n) for n in names if outbox.retrying_users(c, n) >= 2})
        except StorageUnavailable:
            retrying = {}
        for name, since in retrying.items():
            self.workers[name].breaker.start_paused(since)
        for name, count in (await self.rt.db.read(
                lambda c: outbox.waiting_elsewhere(c, names))).items():
            log.warning("destination %r is no longer configured, but %d of its deliveries are"
                        " waiting to be sent: they are kept, and sent once a destination of that"
                        " name is configured again (a renamed destination does not take them)",
                        name, count)
        listen = getattr(self.rt.db, "listen", None)
        if listen is not None:  # PostgreSQL: deliveries routed by another node wake this one
            listen(asyncio.get_running_loop(), self.wake_all)
        mapper = self.router.mapper
        if wait_for_helpers:
            await asyncio.gather(*(helper.start_and_wait() for helper in (mapper, self.deliverer)
                                   if helper is not None))
        elif self.deliverer is not None:
            self.deliverer.start()
        self.tasks.append(asyncio.create_task(self._route_loop(), name="hookyard-router"))
        self.tasks.append(asyncio.create_task(self._maintenance_loop(), name="hookyard-maintenance"))
        for worker in self.workers.values():
            worker.runner = asyncio.create_task(worker.run(), name=f"worker-{worker.dest.name}")
            self.tasks.append(worker.runner)

    async def _route_loop(self) -> None:
        while not self.stopping:
            try:
                count, touched = await self.router.step()
            except Exception as exc:  # noqa: BLE001
                log_failure(log, exc, "router failed, retrying in 1 s")
                count, touched = 0, set()
                await asyncio.sleep(1)
            for name in touched:
                if name in self.workers:
                    self.workers[name].breaker.new_deliveries()
                    self.workers[name].wake.set()
            if count or self.router.busy:
                continue
            self.route_wake.clear()
            try:
                await asyncio.wait_for(self.route_wake.wait(), timeout=IDLE_POLL)
            except TimeoutError:
                pass

    async def _maintenance_loop(self) -> None:
        while not self.stopping:
            await asyncio.sleep(HELPER_CHECK_SECONDS)
            if self.deliverer is not None and not self.deliverer.ready:
                # started again when it may (30 s after a failure) even while nothing is
                # delivered: hookyard_deliver_process_up stayed 0 on an idle server
                self.deliverer.start()
            if time.monotonic() < self._maintain_at:
                continue
            self._maintain_at = time.monotonic() + MAINTENANCE_SECONDS
            try:
                await self.maintain()
                if self.purge_capped:
                    # more past retention than a run deletes: the next run at the next check,
                    # not in 30 s (a run deletes ~200,000 rows in 6-7 s: 30 s between runs
                    # capped retention at ~6,700 rows/s, less than a day's heavy ingest
                    # makes; scale audit)
                    self._maintain_at = time.monotonic()
            except Exception as exc:  # noqa: BLE001
                log_failure(log, exc, "maintenance failed")

    async def maintain(self) -> int:
        """Recover expired leases, then delete what is past retention: finished outbox rows
        (``retention_days``), API log lines and inbox events (:mod:`hookyard.retention`). Each
        step is bounded and its own transaction, so ingest commits in between. Returns the
        outbox rows purged."""
        names = list(self.workers)
        self.purge_capped = False
        await self.rt.db.write(lambda c: outbox.recover_leases(c, names))
        storage = self.rt.config.storage
        purged = 0
        if storage.retention_days > 0:
            cutoff = time.time() - storage.retention_days * 86400
            # every destination with rows, one removed from the config too (its delivered and
            # discarded rows would stay for good, and keep their inbox events)
            every = await self.rt.db.read(outbox.destinations_in)
            purged = await self._purge_rounds(
                lambda c: retention.purge_outbox(c, cutoff, every, positions=self.purge_positions))
            self.outbox_purged = self.outbox_purged or purged > 0
            if purged:
                log.info("deleted %d finished deliveries past retention_days", purged)
        if storage.api_log_retention_days > 0:
            before = retention.cutoff_iso(storage.api_log_retention_days)
            lines = await self._purge_rounds(lambda c: retention.purge_api_log(c, before))
            if lines:
                log.info("deleted %d API log lines past api_log_retention_days", lines)
        if storage.inbox_retention_days > 0:
            await self._purge_inbox(retention.cutoff_iso(storage.inbox_retention_days))
        return purged

    async def _purge_rounds(self, step: Any) -> int:
        total = 0
        for _ in range(MAX_PURGE_ROUNDS):
            gone: int = await self.rt.db.write(step)
            total += gone
            if not gone or self.stopping:
                break
            await asyncio.sleep(PURGE_PAUSE)  # the writer free for ingest between two rounds
        else:
            self.purge_capped = True  # more to do than one run does
        return total

    async def _purge_inbox(self, before: str) -> int:
        now = time.monotonic()
        # events kept for their outbox rows may go once those rows are purged: look at them
        # again after a pass that saw them (not from 0 in every run: a long stretch of kept
        # events would be read again and again, and the scan would never get past it)
        if now >= self.inbox_rescan_at or (self.inbox_pass_ended and self.outbox_purged):
            self.inbox_scan, self.inbox_rescan_at = 0, now + INBOX_RESCAN_SECONDS
            self.inbox_pass_ended = self.outbox_purged = False
        total = 0
        for _ in range(MAX_PURGE_ROUNDS):
            after = self.inbox_scan
            gone, last, frontier = await self.rt.db.write(
                lambda c: retention.purge_inbox(c, before, after)  # noqa: B023
            )
            total += gone
            self.inbox_scan = last
            if frontier:
                self.inbox_pass_ended = True
            if frontier or self.stopping:
                break
            await asyncio.sleep(PURGE_PAUSE)
        else:
            self.purge_capped = True  # the pass goes on at the next check
        if total:
            log.info("deleted %d inbox events past inbox_retention_days", total)
        return total

    def wake_all(self) -> None:
        self.route_wake.set()
        for w in self.workers.values():
            w.scan.rescan = True
            w.wake.set()

    async def stop(self, grace: float = 10.0) -> None:
        self.stopping = True
        self.route_wake.set()
        await asyncio.gather(*(w.stop(grace) for w in self.workers.values()))
        if self.deliverer is not None:
            await self.deliverer.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        try:
            await self.router.close()  # a batch still committing: its outcome is in the database
        except Exception:  # noqa: BLE001 - routed again from the stored cursor next time
            log.warning("the last routing batch was not stored; it is routed again at start",
                        exc_info=True)
