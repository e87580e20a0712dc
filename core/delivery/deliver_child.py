"""The deliver process itself: ``python -m hookyard.delivery.deliver_child``.

Started by :class:`~.deliver_process.DeliverProcess` (read its docstring first). It builds a
runtime from the worker's config and plugins, opens an HTTP client per destination, and then
delivers the batches the worker hands it: per destination in the order they came and at most
``concurrency`` at once (:class:`Lane`), starting the next as soon as one is answered.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import logging
import os
import pickle
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..deliveries import DeliveryResult
from ..http import HttpClient
from .calling import client_for, deliver_rows
from .frames import ANSWER_DELAY, HOLD, Framed, encoder, request_decoder

if TYPE_CHECKING:
    from ..runtime import DestinationRuntime, Runtime

log = logging.getLogger("hookyard.delivery")
SOCKET_FD = "HOOKYARD_DELIVER_FD"  # environment: the child's end of the socket pair


async def _serve(sock: socket.socket) -> None:
    from ..logs import setup_logging
    from ..runtime import Runtime

    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    state: dict[str, Any] = {}
    lanes: dict[str, Lane] = {}

    def on_frame(frame: bytes) -> None:
        if "rt" not in state:
            rt = state["rt"] = _init(frame, proto, setup_logging, Runtime)
            if rt is None:
                proto.close()  # after writing the error
                return
            for name, dest in rt.destinations.items():
                lanes[name] = Lane(rt, dest, client_for(dest), proto)
            return
        req_id, name, start_by, deadline, requests = request_decoder.decode(frame)
        lane = lanes.get(name)
        if lane is None:
            error = DeliveryResult.retryable(f"unknown destination {name!r}")
            proto.send(encoder.encode((req_id, True, 0.0, [("", error)] * len(requests))))
        elif req_id == 0:
            lane.stop()
        elif req_id == HOLD:  # the worker saw the destination rate-limit: until start_by
            lane.rate_limited_until = max(lane.rate_limited_until, start_by)
            lane.pump()
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


class Lane:
    """One destination in the child: its batches in order, ``concurrency`` at once."""

    def __init__(self, rt: Runtime, dest: DestinationRuntime, client: HttpClient,
                 proto: Framed) -> None:
        self.rt, self.dest, self.client, self.proto = rt, dest, client, proto
        self.limit = dest.policy.concurrency
        self.stopping = False
        self.queue: collections.deque[tuple[int, float, float, list[bytes]]] = collections.deque()
        self.tasks: set[asyncio.Task[None]] = set()
        self.running = 0
        self.rate_limited_until = 0.0  # (monotonic) it rate-limits: nothing starts (HOLD)

    def pump(self) -> None:
        """Start the queued batches that fit (at once when one ends: as the baseline of a
        bare aiohttp loop does, not a trip to the worker and back)."""
        if time.monotonic() < self.rate_limited_until:  # rate-limited: what waits here is
            while self.queue:  # given back at once (its answer not waited for past its time)
                self.proto.send(encoder.encode((self.queue.popleft()[0], False, 0.0, [])))
            return
        while self.queue and self.running < self.limit:
            req_id, start_by, deadline, requests = self.queue.popleft()
            now = time.monotonic()
            if now > start_by or self.stopping:
                self.proto.send(encoder.encode((req_id, False, 0.0, [])))
                continue
            self.running += 1
            task = asyncio.get_running_loop().create_task(  # named for report_stuck
                self._run(req_id, requests, max(0.1, deadline - now)), name=TASK_PREFIX + self.dest.name)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def stop(self) -> None:
        self.stopping = True
        while self.queue:
            self.proto.send(encoder.encode((self.queue.popleft()[0], False, 0.0, [])))

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
        self.proto.send(encoder.encode((req_id, True, latency, sent)))
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


TASK_PREFIX = "deliver:"


def stuck_file(pid: int) -> Path:
    """Where the child ``pid`` names the destination whose hook holds its event loop."""
    return Path(tempfile.gettempdir()) / f"hookyard-deliver-{pid}.stuck"


def report_stuck(signum: int, frame: Any) -> None:
    """SIGUSR1 from the worker, whose answers stopped coming: write the destination whose
    ``deliver`` holds the event loop (the task running now, named by :class:`Lane`) to
    :func:`stuck_file`, so the worker blames that one destination and not every one it had
    batches waiting here (the final re-check: all four were held back, a healthy one delivered
    nothing for minutes). The handler runs between the hook's bytecodes, or when its system
    call (a ``time.sleep``) is interrupted."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no loop running: not stuck in a hook
        task = None
    name = task.get_name() if task is not None else ""
    path = stuck_file(os.getpid())
    try:  # written whole, then renamed: the worker never reads half a name
        path.with_suffix(".tmp").write_text(
            name.removeprefix(TASK_PREFIX) if name.startswith(TASK_PREFIX) else "")
        path.with_suffix(".tmp").replace(path)
    except OSError:
        pass


def main() -> int:
    """The child's entry point: the socket named by :data:`SOCKET_FD`; stdout and stderr are
    the worker's."""
    import signal

    from ..serving import run_loop

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, report_stuck)
    sock = socket.socket(fileno=int(os.environ.pop(SOCKET_FD)))
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    run_loop(_serve(sock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
