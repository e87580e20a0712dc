"""One destination's delivery worker: picks due outbox rows, leases them, calls ``deliver``.

Each destination has its own worker, concurrency limit and HTTP client, so a slow or dead
destination never slows another, nor ingest. A worker picks due outbox rows in id order, keeps
deliveries of one ordering key (the user) strictly in order — a user's later event waits while
an earlier one is retried — groups them into batches of the connector's ``batch_size``, leases
them, calls the plugin's ``deliver`` hook and records every attempt (:mod:`.retry` decides what
each result means). A slot frees as soon as the answer arrives and the next claimed batch starts
in it at once (the user stays blocked until its result is stored); :data:`CLAIM_AHEAD` x
``concurrency`` deliveries are claimed ahead so that there always is one.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, Any

from ..config import HOOK_LEASE_SHARE
from ..deliveries import DeliveryResult
from ..logs import log_failure
from . import outbox
from .attempt_log import AttemptLog
from .breaker import Breaker
from .calling import client_for, deliver_rows, failed
from .deliver_process import CRASHED, LOST, NOT_STARTED, STOPPED, DeliverProcess, Sent
from .lost_batches import LostBatches
from .plugin_changes import PluginChanges
from .rate_limit import RateLimit
from .remap import remap
from .results import ResultWriter
from .retry import decide, rate_limit_wait
from .scan import IDLE_POLL, Scan

if TYPE_CHECKING:
    from ..runtime import DestinationRuntime, Runtime

log = logging.getLogger("hookyard.delivery")
EXPEDITE_AFTER = 30.0
"""Seconds a destination must have failed for its waiting retries to be brought forward when
it delivers again (:func:`outbox.expedite`): a blip of a few failures keeps its backoff, and a
destination that fails every other request is not retried at once over and over."""
GIVE_UP_CHECK_SECONDS = 300.0
"""How often a paused destination's deliveries are checked for having waited longer than
``give_up_after_seconds`` (they are not attempted, so no attempt finds it)."""
CLAIM_AHEAD = 8
"""Deliveries kept claimed ahead, in multiples of ``concurrency`` (at least one batch): a
dispatch round takes two trips to the database threads (1-3 ms under load), longer than a
fast destination takes to answer, so the next deliveries must be claimed before the slots
free. bench/delivery.py, single: ~1.2x with 4 against 1 (1 kept the 8 slots 40 % busy). With
the deliver process a worker claims again only when half of this is free, after answers that
come back in 2 ms rounds: 4 let the helper's queue run dry. 8: +11-18 % single deliveries
(30,000 events, 3 alternating rounds; in-process +11-15 %), 16 and 32 no better. Batches of
100 at concurrency 8 are unchanged (one batch ahead either way)."""


class DestinationWorker:
    """Delivers one destination's outbox rows."""

    def __init__(self, rt: Runtime, dest: DestinationRuntime) -> None:
        self.rt = rt
        self.dest = dest
        self.client = client_for(dest)
        self.scrub = rt.scrubber.result  # secrets out of bodies and errors
        self.attempt_log = AttemptLog()
        self.breaker = Breaker(dest.name, dest.policy)
        self.plugin_changes = PluginChanges(dest.name, dest.config.plugin)
        self.give_up_check = 0.0  # (monotonic) when a paused destination's old rows are checked
        self.rate_limit = RateLimit()  # its 429s (:mod:`.rate_limit`)
        self.deliverer: DeliverProcess | None = None  # set by the Engine when one is used
        self.wake = asyncio.Event()
        self.inflight_keys: set[str] = set()
        self.inflight_ids: set[int] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        # tasks still waiting for the destination's answer: the concurrency limit counts these.
        # A task whose answer came is only recording it; its slot is free for the next batch
        # (its users stay blocked until the result is stored, so per-user order holds).
        self.sending = 0
        self.sending_here = 0  # of those, sent by this process (not by the deliver process)
        # batches claimed ahead, started as soon as a slot frees without a trip to the
        # database: (monotonic claim time, rows, each row's user); their users are blocked like
        # in-flight ones
        self.ready: collections.deque[tuple[float, list[outbox.Claimed], list[str]]] = (
            collections.deque()
        )
        self.stale: list[int] = []  # claimed ahead for too long, to be given back
        self.results = ResultWriter(rt, dest.name, dest.policy.lease_seconds)
        self.runner: asyncio.Task[None] | None = None  # the run() loop, set by the Engine
        self.stopping = False
        self.scan = Scan()  # what the last scan of the outbox found (:mod:`.scan`)
        self.delivered_once = False  # a delivery of this process succeeded (see _deliver)
        # rows whose batch the deliver process had when it ended: sent again alone, one at a
        # time, there (never in this process); one that ends it again is the culprit
        self.suspects = LostBatches()  # rows a dead deliver process had (:mod:`.lost_batches`)

    async def run(self) -> None:
        while not self.stopping:
            self.wake.clear()  # before the round: a wake-up during it starts the next at once
            try:
                sleep_for = await self.dispatch()
            except Exception as exc:  # noqa: BLE001 - a worker never dies
                log_failure(log, exc, "worker %s failed, retrying in 1 s", self.dest.name)
                sleep_for = 1.0
            if self.stopping:
                break
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=sleep_for)
            except TimeoutError:
                pass

    async def dispatch(self) -> float:
        """Start as many due batches as there are free slots; return how long to sleep."""
        limit = self.dest.policy.concurrency
        size = self.dest.batch_size
        rate_limited = self.rate_limit.until - time.monotonic()
        if rate_limited > 0 and not self.stopping:  # (back within 10 s: counts are flushed)
            await self._give_back_stale()
            self.attempt_log.flush(self.dest.name)
            return min(rate_limited, 10.0)
        await self._start_ready()
        self.attempt_log.flush(self.dest.name)
        if self._held():  # nothing is claimed until the deliver process is back
            if self.deliverer is not None:
                self.deliverer.start()  # (when it may: not while it starts or waits to)
            return IDLE_POLL
        probing = False
        wait = self.breaker.wait()
        if wait is not None:  # paused: one batch at a time, at the probe's time, due or not
            if self.tasks:  # the probe, or the last batches sent before the pause
                return IDLE_POLL
            if wait > 0 or self.stopping:  # (back within 10 s: the log's counts are flushed)
                return min(max(wait, 0.01), 10.0)
            await self._give_up_waiting()
            probing = True
            self.scan.from_start()  # from the first row, no user skipped
        # batches to claim: one per free slot, plus enough to keep about `limit` deliveries
        # ready (whole batches: at least one). Not more: a user with a claimed row cannot be in
        # another batch, so holding many users back would make the next batches small.
        free = self._free_slots() + (0 if self._in_child() else self._ahead()) - len(self.ready)
        if self.suspects:
            self._cleared(self.suspects.expire())
        if self.suspects:  # the deliver process ended with some of its rows: one batch at
            if self.tasks or self.ready:  # a time, halved each time one ends it alone
                return IDLE_POLL
            free, size = min(free, 1), self.suspects.batch_size(size)
        if probing:  # one delivery: a probe spends no attempt, and tells about the destination
            free, size = min(free, 1), 1
        if free <= 0 or self.stopping:
            return IDLE_POLL
        if self._in_child() and len(self.tasks) >= limit and free < self._ahead() // 2:
            # the child still has a queue to send: claim in fewer, larger rounds (each round
            # reads a page of rows; one per answer cost 60 us of the readers per delivery)
            return IDLE_POLL
        name = self.dest.name
        found = await self.scan.find(
            self.rt.db, name, free=free, size=size, inflight=self.inflight_keys,
            breaker=self.breaker, probing=probing,
            retry_max_seconds=self.dest.policy.retry_max_seconds)
        batches, key_of = found.batches, found.key_of
        if not batches and probing and not self.stopping:
            if self.breaker.widen_probe():  # no user to probe found: look wider, again
                return 0.01
        if not batches or self.stopping:
            return self.scan.idle(found)
        self.scan.rescan = True
        ids = [i for b in batches for i in b]
        lease = self.dest.policy.lease_seconds
        claimed_at = time.monotonic()
        claimed = await self.rt.db.write(lambda conn: outbox.claim(conn, ids, lease), durable=False)
        by_id = {row[0]: row for row in claimed}
        unmapped = self.plugin_changes.to_map_again(claimed)
        if unmapped:
            await self._remap(unmapped)
        remapped = set(unmapped)
        # a user with a row mapped again waits for it: their later rows of this claim go back
        # (sent before it, they broke the user's order; the session's review)
        waiting_for = {key_of[i] for i in remapped if i in key_of}
        held = [i for b in batches for i in b
                if i in by_id and i not in remapped and key_of[i] in waiting_for]
        if held:
            await self.rt.db.write(lambda conn: outbox.release(conn, held))
        remapped.update(held)
        for batch in batches:
            rows = [by_id[i] for i in batch if i in by_id and i not in remapped]
            if rows:
                users = [key_of[r[0]] for r in rows]
                self.inflight_keys.update(users)
                self.inflight_ids |= {r[0] for r in rows}
                self.ready.append((claimed_at, rows, users))
        await self._start_ready()
        if probing:
            self.breaker.probe_started(key_of.values())
            return IDLE_POLL
        return 0.0 if self.sending < limit else IDLE_POLL

    def _ahead(self) -> int:
        """Batches kept claimed ahead: :data:`CLAIM_AHEAD` x `concurrency` deliveries, at least
        one batch."""
        return max(1, CLAIM_AHEAD * self.dest.policy.concurrency // self.dest.batch_size)

    def _free_slots(self) -> int:
        """Batches that may start now: at most `concurrency` waiting for an answer, and at most
        `concurrency` + :meth:`_ahead` tasks in all (those still storing results included).
        With the deliver process every claimed batch is handed to it at once: it queues them
        and sends `concurrency` at a time (a slot is refilled there, not by a trip back here)."""
        limit = self.dest.policy.concurrency
        if self._in_child():
            return limit + self._ahead() - len(self.tasks)
        if self._held():
            return 0
        return min(limit - self.sending, limit + self._ahead() - len(self.tasks))

    async def _expedite(self, failed_for: float) -> None:
        """The destination delivers again after ``failed_for`` seconds of failures: its waiting
        retries are brought forward (and this worker forgets when it thought they were due)."""
        name = self.dest.name
        moved = await self.rt.db.write(lambda conn: outbox.expedite(conn, name, time.time()))
        if moved:
            log.info("destination %s delivers again after %.0f s of failures: its %d waiting"
                     " retries go out within %g s", name, failed_for, moved,
                     outbox.EXPEDITE_SPREAD, extra={"destination": name})
            self.scan.from_start()
            self.wake.set()

    def _pause(self) -> None:
        """The destination is paused (:mod:`.breaker`): the batches claimed ahead are given
        back, and the age of its waiting deliveries is checked once it was paused long enough."""
        self._give_back_ready()
        self.give_up_check = 0.0

    def _give_back_ready(self) -> None:
        while self.ready:
            _, rows, users = self.ready.popleft()
            self.stale.extend(r[0] for r in rows)
            self.inflight_keys.difference_update(users)

    def _rate_limited(self, wait: float, users: set[str]) -> None:
        """A call of ``users``' deliveries was answered ``429`` (:mod:`.rate_limit`): once the
        destination's own limit is reached, no new request goes out for ``wait`` seconds
        (:func:`.retry.rate_limit_wait`; the deliver process holds back too) and the batches
        claimed ahead are given back."""
        before = self.rate_limit.until
        until = self.rate_limit.refused(users, wait)
        if until is None:
            return
        if before < time.monotonic() - 60:  # said once a minute at most
            log.info("destination %s is rate-limiting (429): no new requests for %g s",
                     self.dest.name, wait, extra={"destination": self.dest.name})
        self._give_back_ready()
        if self.deliverer is not None:
            self.deliverer.hold(self.dest.name, until)

    async def _give_up_waiting(self) -> None:
        """Once paused for ``give_up_after_seconds``, every :data:`GIVE_UP_CHECK_SECONDS`: the
        deliveries that waited longer than that become dead letters, as their attempts would
        have made them had they been sent. Not sooner: a blip's pause, or one at a restart,
        made dead letters of a backlog older than that which was never tried (a slow
        destination's), although the destination was up (delivery adversity audit)."""
        policy, paused_at = self.dest.policy, self.breaker.paused_at
        if time.monotonic() < self.give_up_check or paused_at is None:
            return
        paused_for = time.time() - paused_at
        if paused_for < policy.give_up_after_seconds:
            self.give_up_check = time.monotonic() + min(
                GIVE_UP_CHECK_SECONDS, policy.give_up_after_seconds - paused_for)
            return
        self.give_up_check = time.monotonic() + GIVE_UP_CHECK_SECONDS
        name, last = self.dest.name, self.breaker.last_error
        error = (f"gave up after {policy.give_up_after_seconds:g} s: {name} was paused, failing"
                 f" every delivery" + (f" (last: {last})" if last else ""))
        cutoff = time.time() - policy.give_up_after_seconds
        dead = 0
        while True:  # in chunks: each its own transaction, ingest's writes between them
            done = await self.rt.db.write(
                lambda conn: outbox.give_up_waiting(conn, name, cutoff, error))
            dead += done
            if done < outbox.GIVE_UP_CHUNK or self.stopping:
                break
        if dead:
            log.warning("destination %s: %d deliveries waited longer than %g s while it was"
                        " paused and are dead letters (hookyard dlq list)", name, dead,
                        policy.give_up_after_seconds, extra={"destination": name})
            self.scan.rescan = True

    def _held(self) -> bool:
        """Whether this destination waits for the deliver process instead of delivering here:
        its hook had the helper killed (:attr:`DeliverProcess.blamed`: here it would hold the
        worker's event loop, ingest with it), it has suspects of a helper that ended
        (:mod:`.lost_batches`), or the helper is starting or being replaced."""
        deliverer = self.deliverer
        if deliverer is None or deliverer.ready:
            return False
        if self.dest.name in deliverer.blamed or self.suspects:
            return True
        # starting, or started again after it ended by itself: what ended it could end this
        # process (a plugin's deliver crashing it on an event: source-author audit, re-check).
        # In this process only while a start fails, or a hook of another destination held it
        return not deliverer.cannot_start and deliverer.lost_to is None

    def _in_child(self) -> bool:
        """Whether new batches go to the deliver process: it is ready, and none of this
        worker's own requests is still waiting (the two together could exceed `concurrency`
        while the helper starts)."""
        return self.deliverer is not None and self.deliverer.ready and self.sending_here == 0

    def _start_claimed(self) -> None:
        """Start claimed batches in the free slots; put those that waited too long (a quarter
        of the lease, so a delivery never outlives its lease) in ``stale``, to be given back."""
        stale_after = self.dest.policy.lease_seconds / 4
        now = time.monotonic()
        if now < self.rate_limit.until:
            return
        while self.ready and not self.stopping:
            if now - self.ready[0][0] > stale_after:
                _, rows, users = self.ready.popleft()
                self.stale.extend(r[0] for r in rows)
                self.inflight_keys.difference_update(users)
                continue
            if self._free_slots() <= 0:
                break
            claimed_at, rows, users = self.ready.popleft()
            self._start(rows, users, claimed_at)

    async def _start_ready(self) -> None:
        """:meth:`_start_claimed`, and give back the stale ones (also those found meanwhile)."""
        self._start_claimed()
        await self._give_back_stale()

    async def _give_back_stale(self) -> None:
        stale, self.stale = self.stale, []
        if stale:
            log.debug("%s: gave back %d deliveries claimed ahead that waited too long",
                      self.dest.name, len(stale))
            self.inflight_ids -= set(stale)
            self.scan.rescan = True
            await self.rt.db.write(lambda conn: outbox.release(conn, stale))

    async def _remap(self, ids: list[int]) -> None:
        try:
            await remap(self.rt, self.dest, ids)
        except Exception:  # noqa: BLE001 - give the rows back; the next round tries again
            log.exception("mapping %d deliveries of %s again failed", len(ids), self.dest.name)
            await self.rt.db.write(lambda conn: outbox.release(conn, ids))
        self.wake.set()

    def _lost(self, rows: list[outbox.Claimed], requests: list[bytes]) -> Sent:
        """The results of a batch the deliver process had when it ended (:mod:`.lost_batches`):
        retried, or the culprit's dead letter."""
        deliverer = self.deliverer
        assert deliverer is not None
        ids = [r[0] for r in rows]
        # a destination's hook held the child's event loop and had it killed (lost_to): that
        # one waits for the next child (DeliverProcess.blamed), the others' deliveries only
        # waited behind it; all are retried as usual. Else (while any destination has suspects
        # the child runs one batch at a time, whoever's: a healthy destination's delivery was
        # blamed when two had one each there; re-check)
        verdict = None if deliverer.lost_to is not None else self.suspects.lost(
            ids, deliverer.lost_alone, deliverer.lost_to_sigkill)
        if verdict == "culprit":
            self._cleared(bool(self.suspects))
            plugin = self.dest.config.plugin
            log.error("destination %s: the deliver process ended twice while sending outbox row"
                      " %d, the second time alone: a dead letter (plugin %r ends its process on"
                      " it)", self.dest.name, ids[0], plugin, extra={"destination": self.dest.name})
            return failed(self.dest, requests, DeliveryResult.permanent(
                f"{CRASHED} (plugin {plugin!r})"))
        if verdict == "first":
            log.warning("destination %s: the deliver process ended while it had deliveries of"
                        " it: they are sent again one batch at a time in a new deliver"
                        " process, halved each time one ends it, to find one that does",
                        self.dest.name, extra={"destination": self.dest.name})
            self._give_back_ready()
        if verdict in ("first", "again"):
            deliverer.probation.add(self.dest.name)
        return failed(self.dest, requests, DeliveryResult.retryable(STOPPED))

    def _cleared(self, left: bool) -> bool:
        """With no suspect ``left``, the deliver process no longer runs one batch at a time
        for this destination; returns ``left``."""
        if not left and self.deliverer is not None:
            self.deliverer.probation.discard(self.dest.name)
        return left

    def _start(
        self, rows: list[outbox.Claimed], users: list[str], claimed_at: float
    ) -> None:
        self.sending += 1
        here = not self._in_child()
        self.sending_here += here
        if here and self.deliverer is not None:
            self.deliverer.start()  # again, once RESTART_AFTER has passed since it failed
        task = asyncio.create_task(self._deliver(rows, users, claimed_at, here))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _deliver(
        self, rows: list[outbox.Claimed], users: list[str], claimed_at: float, here: bool,
    ) -> None:
        """Deliver a claimed batch (``here``: in this process, else by the deliver process) and
        store the outcome."""
        started = time.perf_counter()
        answered = lost = False
        try:
            policy = self.dest.policy
            deadline = claimed_at + policy.lease_seconds * HOOK_LEASE_SHARE
            requests = [row[1] or b"" for row in rows]  # (every one made: see dispatch)
            if here:
                limit = max(0.1, deadline - time.monotonic())
                sent = await deliver_rows(self.rt, self.dest, self.client, requests, limit)
                latency = (time.perf_counter() - started) * 1000
            else:
                assert self.deliverer is not None
                answer = await self.deliverer.deliver(
                    self.dest.name, requests, claimed_at + policy.lease_seconds / 4, deadline)
                if answer is None or answer is NOT_STARTED:  # not sent: give the rows back
                    answered = True  # (it waited too long there, the worker stops, or the
                    self.sending -= 1  # helper stopped before it was handed over)
                    await self.rt.db.write(lambda conn: outbox.release(conn, [r[0] for r in rows]))
                    return
                lost = answer is LOST
                latency, sent = answer if not lost else (0.0, self._lost(rows, requests))
            if self.suspects and not lost:
                self._cleared(self.suspects.clear([r[0] for r in rows]))
            answered = True
            self.sending -= 1  # the slot is free; the rows' users wait for the record
            self.sending_here -= here
            rate_limited = rate_limit_wait(policy, (res for _, res in sent))
            if self.rate_limit.users and any(res.outcome == "ok" for _, res in sent):
                self.rate_limit.delivered()  # it takes requests: the 429s were those users'
            if rate_limited is not None:  # before the next batch starts; the users refused
                # (not those held back behind them: one user's 429 in a Novu call of 100
                # users held the whole destination, and a backlog grew 16 times slower than
                # it drained; soak audit)
                # (a call with a delivery in it cleared the earlier ones above: re-check)
                self._rate_limited(rate_limited, {
                    user for user, (_, res) in zip(users, sent) if res.rate_limited})
            self._start_claimed()  # at once: a dispatch round may be waiting for the database
            self.wake.set()
            name, scrub, probe = self.dest.name, self.scrub, self.breaker.probing
            outcomes = [
                decide(policy, name, row, message_id, scrub(res), latency, probe)
                for row, (message_id, res) in zip(rows, sent)
            ]
            await self.results.store(outcomes)
            failed_for = self.attempt_log.record(outcomes, destination_failed=not lost)
            asked = max((res.retry_after or 0.0 for _, res in sent
                         if res.outcome == "retryable" and res.sent), default=0.0)
            if not lost and self.breaker.record(outcomes, users, asked):
                self._pause()
            if not self.delivered_once and any(o.sent and o.outcome == "ok" for o in outcomes):
                # the first delivery of this process: failures from before a restart are not in
                # its attempt log, but their retries still wait (the final re-check)
                self.delivered_once = True
                since = await self.rt.db.read(lambda conn: outbox.failing_since(conn, name))
                if since is not None:
                    failed_for = max(failed_for or 0.0, time.time() - since)
            if failed_for is not None and failed_for >= EXPEDITE_AFTER:
                await self._expedite(failed_for)
            if self.rt.engine is not None:
                self.rt.engine.observe(self.dest.name, outcomes)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - rows stay leased and are recovered on expiry
            log_failure(log, exc, "recording results of %s failed", self.dest.name)
        finally:
            if not answered:
                self.sending -= 1
                self.sending_here -= here
            self.scan.rescan = True
            self.inflight_keys.difference_update(users)
            self.inflight_ids -= {r[0] for r in rows}
            self.wake.set()

    async def stop(self, grace: float) -> None:
        """Stop picking rows; wait ``grace`` seconds for in-flight deliveries, release the rest."""
        self.stopping = True
        self.wake.set()
        if self.deliverer is not None:  # batches it has not started are given back
            self.deliverer.stop_starting(self.dest.name)
        deadline = time.monotonic() + grace
        if self.runner is not None:  # let a dispatch round in progress finish its claims
            await asyncio.wait({self.runner}, timeout=grace)
        if self.tasks:
            log.info("stopping: waiting up to %.0f s for %d deliveries to %s in flight",
                     max(0.0, deadline - time.monotonic()), len(self.inflight_ids),
                     self.dest.name)
            await asyncio.wait(set(self.tasks), timeout=max(0.0, deadline - time.monotonic()))
        self.results.close()
        leftover = list(self.inflight_ids)
        for task in list(self.tasks):
            task.cancel()
        if leftover:
            try:
                await self.rt.db.write(lambda conn: outbox.release(conn, leftover))
                log.info("stopping: %d deliveries to %s did not finish and were given back"
                         " (sent again at the next start)", len(leftover), self.dest.name)
            except Exception:  # noqa: BLE001 - leases expire anyway
                log.warning("could not release %d leased deliveries", len(leftover))
        await self.client.close()
