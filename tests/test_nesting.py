"""hookyard.nesting: the limit on how deeply an event nests objects and arrays."""

from __future__ import annotations

import msgspec
from hookyard.nesting import MAX_NESTING, depth_exceeds, too_deep


def test_depth_counts_objects_and_arrays_from_the_top_one() -> None:
    assert not depth_exceeds({"a": [1, {"b": 2}]}, 3)
    assert depth_exceeds({"a": [1, {"b": []}]}, 3)
    assert not depth_exceeds("scalar", 0)


def test_too_deep_measures_only_json_with_enough_brackets() -> None:
    wide = msgspec.json.encode({"items": [{"i": i} for i in range(MAX_NESTING * 2)]})
    assert not too_deep(wide)  # many brackets, two levels
    assert not too_deep(msgspec.json.encode({"s": "[" * 1000}))  # brackets in a string
    assert too_deep(b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1))
    assert not too_deep(b"[" * MAX_NESTING + b"]" * MAX_NESTING)


def test_any_depth_is_measured_without_recursion() -> None:
    value: object = 1
    for _ in range(100_000):
        value = [value]
    assert depth_exceeds(value, MAX_NESTING)
