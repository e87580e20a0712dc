"""The deliver process's wire: length-prefixed frames over a Unix socket, and its messages.

Frames are a 4-byte little-endian length and a payload. The first frame each way is the
handshake (the pickled ``init``; ``b"ready"`` or ``b"error: ..."``), then msgpack messages:
requests ``[id, destination, start_by, deadline, [stored request, ...]]`` (id 0: start no
more batches of that destination) and answers ``[id, started, latency_ms, [[messageId,
result], ...]]``. Used by :mod:`.deliver_process` (the worker's side) and :mod:`.deliver_child`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec

from ..deliveries import DeliveryResult

encoder = msgspec.msgpack.Encoder()
request_decoder = msgspec.msgpack.Decoder(tuple[int, str, float, float, list[bytes]])
HOLD = -1
"""A request id that is no batch: the destination rate-limits until the frame's ``start_by``
(``time.monotonic()``); the child gives back what waits for it and starts nothing before."""
answer_decoder = msgspec.msgpack.Decoder(
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
