"""Delivering on another core: the ``deliver`` hooks' HTTP requests in a helper process.

A worker's event loop runs every delivery's HTTP request (aiohttp) beside the engine's own
bookkeeping (claims, results, routing), and the two together cost more than each alone: every
answer from the destination and every hand-off to the database threads is a trip for the GIL.
For a connector that says its ``deliver`` hook needs only its settings and the HTTP client
(``Connector.deliver_anywhere``), a child process built from the same config and plugins sends
the requests instead: the worker hands it the claimed rows' stored requests and gets one
``(messageId, DeliveryResult)`` per row back; claiming, deciding and storing the outcome stay
in the worker, exactly as before.

The child holds no state the worker needs. When it is not running yet, cannot start, or has
died, the worker delivers in its own process; deliveries the child had in hand when it died
are retryable results (``"deliver process stopped"``): they may have been sent, and at least
once allows sending them again. Used when ``[server] deliver_process`` is on (the default) and
the machine has more than one core, on POSIX systems, not in the single-file binary, and only
with plugins the child can load (installed, or given as modules).

Protocol (one Unix socket pair; frames of a 4-byte little-endian length and a payload): the
first frame is the pickled ``init``; the child answers ``b"ready"`` or ``b"error: ..."``. Then
msgpack ``[id, destination, start_by, deadline, [request, ...]]`` -> ``[id, started, latency_ms,
[[messageId, result], ...]]``; id 0 asks the child to start no more batches of that destination
(the worker is stopping: the queued ones are answered as not started). The socket's end (EOF)
ends the child, which so gives up with its parent.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ..deliveries import DeliveryResult
from ..http import HttpClient
from .calling import deliver_rows, failed
from .map_process import cores, plugin_modules

if TYPE_CHECKING:
    from ..runtime import DestinationRuntime, Runtime

log = logging.getLogger("hookyard.delivery")
START_TIMEOUT = 60.0  # seconds the child may take to load the plugins and answer "ready"
START_WAIT = 10.0  # seconds the engine waits for the child at start-up before it delivers
RESTART_AFTER = 30.0  # seconds before a child that died is started again
ANSWER_GRACE = 5.0
"""Seconds past a request's own time limit before the child counts as stuck (a plugin blocking
its event loop): it is killed, and the worker delivers in its own process meanwhile."""
SOCKET_FD = "HOOKYARD_DELIVER_FD"  # environment: the child's end of the socket pair
STOPPED = "deliver process stopped before answering (the request may have been sent)"

Sent = list[tuple[str, DeliveryResult]]
"""(messageId, result) for each stored request of a batch, in order."""
Answer = tuple[float, Sent]
"""The hook's latency (ms) and what it sent."""
NOT_STARTED: Answer = (0.0, [])
"""The answer for a batch the child did not start (it waited there past its ``start_by``, or
the worker is stopping): the caller gives its rows back, no attempt was made."""
_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(tuple[int, str, float, float, list[bytes]])
_answer_decoder = msgspec.msgpack.Decoder(
    tuple[int, bool, float, list[tuple[str, DeliveryResult]]])
ANSWER_DELAY = 0.002
"""Seconds the child collects answers before it writes them (the worker's queue is refilled in
the child, so nothing waits for them but the record): each write wakes the worker, and one
write per answer cost the two processes ~30 % of their time (bench, single deliveries: one
write per 3 answers -> per ~10, +12-30 % events/s in 3 alternating pairs)."""


class Framed(asyncio.Protocol):
    """Length-prefixed frames over a stream; frames sent in one turn of the loop (or within
    ``delay`` seconds) share a write."""

    def __init__(self, on_frame: Callable[[bytes], None], on_lost: Callable[[], None],
                 delay: float = 0.0) -> None:
        self.on_frame = on_frame
        self.delay = delay
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 4:
            size = int.from_bytes(buf[pos:pos + 4], "little")
            if end - pos - 4 < size:
                break
            frame = bytes(buf[pos + 4:pos + 4 + size])
            pos += 4 + size
            self.on_frame(frame)
        if pos:
            del buf[:pos]

    def send(self, payload: bytes) -> None:
        if not self.out:
            if self.delay:
                asyncio.get_running_loop().call_later(self.delay, self._flush)
            else:
                asyncio.get_running_loop().call_soon(self._flush)
        self.out.append(len(payload).to_bytes(4, "little"))
        self.out.append(payload)

    def _flush(self) -> None:
        out, self.out = self.out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def close(self) -> None:
        """Write what is waiting, then close."""
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.on_lost()


class DeliverProcess:
    """The worker's side: starts the child and has it deliver claimed rows.

    :meth:`deliver` answers None whenever the child is not ready (the caller delivers
    in-process then; the child is started again later)."""

    def __init__(self, rt: Runtime, modules: list[str], destinations: list[str]) -> None:
        self.rt = rt
        self.modules = modules
        self.destinations = destinations
        self.ready = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.proto: Framed | None = None
        self.waiting: dict[int, asyncio.Future[Answer]] = {}
        self.next_id = 0
        self._starting: asyncio.Task[None] | None = None
        self._failed_at = 0.0
        self._closing = False
        self.answer_grace = ANSWER_GRACE

    @classmethod
    def wanted(cls, rt: Runtime) -> DeliverProcess | None:
        """A deliver process for ``rt``'s destinations whose connector allows it, or None."""
        names = [n for n, d in rt.destinations.items()
                 if d.connector.deliver_anywhere and d.config.enabled]
        if (not names or not rt.config.server.deliver_process or os.name != "posix"
                or getattr(sys, "frozen", False) or cores() < 2):
            return None
        modules = plugin_modules(rt)
        if modules is None:
            return None
        return cls(rt, modules, names)

    # -- the worker's side ------------------------------------------------------------------
    async def start_and_wait(self, timeout: float = START_WAIT) -> None:
        """Start the child and wait until it is ready (at most ``timeout`` seconds; the worker
        delivers in-process until then), so that deliveries do not start on the slower path."""
        self.start()
        if self._starting is not None:
            await asyncio.wait({self._starting}, timeout=timeout)

    def start(self) -> None:
        """Start the child in the background; :meth:`deliver` uses it once it is ready."""
        if (self._closing or self._starting is not None or self.ready
                or time.monotonic() - self._failed_at < RESTART_AFTER):
            return
        self._starting = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        from ..logs import config_secrets

        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
                   **{SOCKET_FD: str(theirs.fileno())})
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hookyard.delivery.deliver_process"],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), env=env,
                start_new_session=True,  # a Ctrl-C in the terminal is the parent's to handle
            )
        except OSError as exc:
            ours.close()
            self._gone(f"could not start: {exc}")
            return
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        first: asyncio.Future[bytes] = loop.create_future()

        def on_frame(frame: bytes) -> None:
            if not first.done():
                first.set_result(frame)
            else:
                self._answered(frame)

        def on_lost() -> None:
            if not first.done():  # it ended before it answered
                first.set_exception(ConnectionError("it exited"))
            self._lost()

        proto = self.proto = Framed(on_frame, on_lost)
        await loop.connect_accepted_socket(lambda: proto, ours)
        init = (self.rt.config, self.modules, logging.getLogger().level, config_secrets(self.rt))
        proto.send(pickle.dumps(init))
        try:
            async with asyncio.timeout(START_TIMEOUT):
                answer = await first
        except TimeoutError:
            self._gone(f"could not start: no answer within {START_TIMEOUT:g} s")
            return
        except ConnectionError:
            self._gone(f"could not start ({self._exit_status() or 'connection closed'})")
            return
        if answer != b"ready":
            self._gone(f"could not start: {answer.decode(errors='replace').removeprefix('error: ')}")
            return
        self.ready = True
        self._starting = None
        log.info("deliver process %s ready: %s deliver on another core",
                 self.proc.pid, ", ".join(self.destinations))

    def _answered(self, frame: bytes) -> None:
        try:
            req_id, started, latency, results = _answer_decoder.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("deliver process sent an unreadable answer (%s)", exc)
            return
        fut = self.waiting.pop(req_id, None)
        if fut is not None and not fut.done():
            fut.set_result((latency, results) if started else NOT_STARTED)

    def _lost(self) -> None:
        if self.ready and not self._closing:
            self._gone(f"stopped ({self._exit_status() or 'connection closed'})")
        else:
            self.ready = False
            self._fail_waiting()

    async def deliver(
        self, destination: str, requests: list[bytes], start_by: float, deadline: float
    ) -> Answer | None:
        """The latency and the (messageId, result) of each stored request, delivered by the
        child, which runs at
        most the destination's ``concurrency`` batches at once, in the order they came, and
        gives the hook until ``deadline`` (``time.monotonic()``: one clock for every process
        of the machine). :data:`NOT_STARTED` when the batch waited in the child past
        ``start_by``; None when the child is not ready (the caller delivers in-process)."""
        if not self.ready or self.proto is None:
            self.start()
            return None
        self.next_id += 1
        req_id = self.next_id
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.waiting[req_id] = fut
        self.proto.send(_encoder.encode((req_id, destination, start_by, deadline, requests)))
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic()) + self.answer_grace):
                return await fut
        except TimeoutError:
            self.waiting.pop(req_id, None)
            self._gone(f"did not answer within {self.answer_grace:g} s of a deliver hook's time"
                       " limit, killed")
        except ConnectionError:
            pass
        return 0.0, failed(self.rt.destinations[destination], requests,
                           DeliveryResult.retryable(STOPPED))

    def stop_starting(self, destination: str) -> None:
        """The worker of ``destination`` stops: batches the child has not started yet are
        answered :data:`NOT_STARTED` (their rows are given back, as the worker does with the
        batches it claimed ahead), those in flight finish."""
        if self.ready and self.proto is not None:
            self.proto.send(_encoder.encode((0, destination, 0.0, 0.0, [])))

    def _fail_waiting(self) -> None:
        waiting, self.waiting = self.waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError(STOPPED))

    def _exit_status(self) -> str:
        if self.proc is None:
            return ""
        try:
            code = self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return ""
        return f"exit status {code}" if code >= 0 else f"killed by signal {-code}"

    def _gone(self, why: str) -> None:
        log.warning("deliver process %s; delivering in the worker process (trying again in %g s)",
                    why, RESTART_AFTER)
        self.ready = False
        self._failed_at = time.monotonic()
        self._starting = None
        self._stop_child()
        self._fail_waiting()

    def _stop_child(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()
        self.proto = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL did not work
                pass
        self.proc = None

    async def close(self) -> None:
        """Stop the child (at shutdown, after the workers: nothing is in flight)."""
        self._closing = True
        self.ready = False
        if self._starting is not None:
            self._starting.cancel()
        proc = self.proc
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()  # EOF: the child closes its clients and ends
        if proc is not None:
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._stop_child()
        self._fail_waiting()


# -- the child ---------------------------------------------------------------------------------
async def _serve(sock: socket.socket) -> None:
    from ..logs import setup_logging
    from ..runtime import Runtime

    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    state: dict[str, Any] = {}
    lanes: dict[str, _Lane] = {}

    def on_frame(frame: bytes) -> None:
        if "rt" not in state:
            rt = state["rt"] = _init(frame, proto, setup_logging, Runtime)
            if rt is None:
                proto.close()  # after writing the error
                return
            for name, dest in rt.destinations.items():
                client = HttpClient(connect_timeout=dest.policy.connect_timeout_seconds,
                                    total_timeout=dest.policy.total_timeout_seconds)
                lanes[name] = _Lane(rt, dest, client, proto)
            return
        req_id, name, start_by, deadline, requests = _request_decoder.decode(frame)
        lane = lanes.get(name)
        if lane is None:
            error = DeliveryResult.retryable(f"unknown destination {name!r}")
            proto.send(_encoder.encode((req_id, True, 0.0, [("", error)] * len(requests))))
        elif req_id == 0:
            lane.stop()
        else:
            lane.queue.append((req_id, start_by, deadline, requests))
            lane.pump()

    def on_lost() -> None:
        if not ended.done():
            ended.set_result(None)

    proto = Framed(on_frame, on_lost, ANSWER_DELAY)
    await loop.connect_accepted_socket(lambda: proto, sock)
    await ended
    for lane in lanes.values():
        await lane.close()


class _Lane:
    """One destination in the child: its batches in order, ``concurrency`` at once."""

    def __init__(self, rt: Runtime, dest: DestinationRuntime, client: HttpClient,
                 proto: Framed) -> None:
        self.rt, self.dest, self.client, self.proto = rt, dest, client, proto
        self.limit = dest.policy.concurrency
        self.stopping = False
        self.queue: collections.deque[tuple[int, float, float, list[bytes]]] = collections.deque()
        self.tasks: set[asyncio.Task[None]] = set()
        self.running = 0

    def pump(self) -> None:
        """Start the queued batches that fit (at once when one ends: as the baseline of a
        bare aiohttp loop does, not a trip to the worker and back)."""
        while self.queue and self.running < self.limit:
            req_id, start_by, deadline, requests = self.queue.popleft()
            now = time.monotonic()
            if now > start_by or self.stopping:
                self.proto.send(_encoder.encode((req_id, False, 0.0, [])))
                continue
            self.running += 1
            task = asyncio.get_running_loop().create_task(
                self._run(req_id, requests, max(0.1, deadline - now)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def stop(self) -> None:
        self.stopping = True
        while self.queue:
            self.proto.send(_encoder.encode((self.queue.popleft()[0], False, 0.0, [])))

    async def _run(self, req_id: int, requests: list[bytes], limit: float) -> None:
        started = time.perf_counter()
        try:
            sent = await deliver_rows(self.rt, self.dest, self.client, requests, limit)
        except Exception as exc:  # noqa: BLE001 - deliver_rows handles the plugin's; a bug here
            log.exception("deliver process: delivering %d rows of %s failed",
                          len(requests), self.dest.name)
            sent = [("", DeliveryResult.retryable(f"deliver process: {type(exc).__name__}: {exc}"))
                    ] * len(requests)
        finally:
            self.running -= 1
        latency = (time.perf_counter() - started) * 1000
        self.proto.send(_encoder.encode((req_id, True, latency, sent)))
        self.pump()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await self.client.close()


def _init(frame: bytes, proto: Framed, setup_logging: Any, runtime: Any) -> Any:
    try:
        config, modules, level, secrets = pickle.loads(frame)
        setup_logging(logging.getLevelName(level).lower(), secrets)
        plugins: list[object] = [importlib.import_module(name) for name in modules]
        rt = runtime.build(config, plugins, prepare=False)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which delivers itself
        proto.send(f"error: {type(exc).__name__}: {exc}".encode())
        return None
    proto.send(b"ready")
    return rt


def main() -> int:
    """The child's entry point: the socket named by :data:`SOCKET_FD`; stdout and stderr are
    the worker's."""
    import signal

    from ..cli import run_loop

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(os.environ.pop(SOCKET_FD)))
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    run_loop(_serve(sock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
