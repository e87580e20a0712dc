"""How a dispatch round packs the rows it found into batches (``scan.pack``): whole users,
one batch after the other, each user's rows in order."""

from __future__ import annotations

import time
from collections.abc import Callable

from delivery_kit import PLUGIN, items, recorder, send, track
from hookyard.delivery.scan import pack
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer


def test_pack_fills_batches_one_after_the_other_with_whole_users() -> None:
    collected = {"a": [1, 4, 7], "b": [2, 5], "c": [3, 6, 8, 9]}
    batches, key_of = pack(collected, batches=3, size=4)
    # b's first row fills the first batch; its second waits (a user is never in two batches)
    assert batches == [[1, 4, 7, 2], [3, 6, 8, 9]]
    assert key_of == {1: "a", 4: "a", 7: "a", 2: "b", 3: "c", 6: "c", 8: "c", 9: "c"}


def test_pack_leaves_what_does_not_fit_for_a_later_round() -> None:
    batches, key_of = pack({"a": [1, 2, 3], "b": [4, 5, 6], "c": [7]}, batches=1, size=4)
    assert batches == [[1, 2, 3, 4]] and set(key_of) == {1, 2, 3, 4}
    assert pack({}, batches=3, size=4) == ([], {})
    assert pack({"a": [1], "b": [2], "c": [3]}, batches=2, size=1)[0] == [[1], [2]]


def test_few_busy_users_are_delivered_in_parallel(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    """Rows found in scan order (a, b, c, d, a, b, ...) used to go into the first batch row by
    row: it held every user, and no second batch could start beside it."""
    fake = fake_destination()
    fake.hang(0.5, times=100)
    server = hookyard_server(
        {"destinations": [recorder(fake.url, delivery={"concurrency": 4, "batch_size": 8})]},
        plugins=[PLUGIN])
    events = [track(user, i) for i in range(8) for user in "abcd"]  # 32 rows, 4 users
    started = time.monotonic()
    assert send(server, "/v1/batch", {"batch": events}).status_code == 200
    server.wait_idle()
    assert time.monotonic() - started < 10
    sizes = sorted(len(items(r)) for r in fake.requests)
    assert sizes == [8, 8, 8, 8]  # one batch per user, sent side by side
    for r in fake.requests:
        assert len({it["messageId"].split("-")[0] for it in items(r)}) == 1
        seqs = [int(it["messageId"].split("-")[1]) for it in items(r)]
        assert seqs == sorted(seqs)
    arrivals = sorted(r.received_at for r in fake.requests)
    assert arrivals[-1] - arrivals[0] < 0.4  # not one after another (each hangs 0.5 s)


Start = Callable[..., HookyardServer]
