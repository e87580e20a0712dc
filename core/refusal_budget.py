"""How many refused ingest requests get an API log row: a burst, then one every few seconds.

Every refused request (a wrong key, malformed JSON, a path no source serves) used to write an
API log row, kept for the retention period: a client with no key at all could add 500 rows a
second, fill the disk and bury the real entries of ``/api/logs``. Now each kind of refusal
(source and status) has a bucket of :data:`BURST` rows that refills one row every
:data:`REFILL_SECONDS`. A refusal past it is not written; the next row of its kind says how many
were left out. ``/metrics`` (``hookyard_requests_rejected_total``) still counts every one.
"""

from __future__ import annotations

import time

BURST = 100
"""Rows of one kind of refusal written in a row before the budget applies."""
REFILL_SECONDS = 1.0
"""Seconds per row of one kind once its burst is spent."""
MAX_KINDS = 1024
"""Kinds remembered (a bounded set: the sources of a config, and HTTP statuses)."""


class RefusalBudget:
    def __init__(self) -> None:
        self._buckets: dict[tuple[str | None, int], list[float]] = {}  # kind -> [tokens, at]
        self._skipped: dict[tuple[str | None, int], int] = {}

    def take(self, source: str | None, status: int) -> int | None:
        """None when this refusal gets no row; else how many of its kind were left out
        since the last row (0 mostly)."""
        kind = (source, status)
        now = time.monotonic()
        bucket = self._buckets.get(kind)
        if bucket is None:
            if len(self._buckets) >= MAX_KINDS:
                self._buckets.clear()
            bucket = self._buckets[kind] = [float(BURST), now]
        bucket[0] = min(float(BURST), bucket[0] + (now - bucket[1]) / REFILL_SECONDS)
        bucket[1] = now
        if bucket[0] < 1.0:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return None
        bucket[0] -= 1.0
        return self._skipped.pop(kind, 0)
