"""docs/writing-a-connector.md stays true: its complete examples (the ```python blocks that
start with ``from __future__ import annotations``) run, register with a plugin manager, and
behave as the text says; its commands and helper descriptions match the code."""

from __future__ import annotations
import __future__

import functools
import re
import sys
import types
from pathlib import Path

import msgspec
import pytest
from hookyard.connectors import ParsedEvent, RefusedEvent
from hookyard.deliveries import MapResult
from hookyard.errors import BadRequest
from hookyard.testing import (
    authenticate_with,
    destination_context,
    ingest_request,
    map_with,
    parse_with,
    registry,
    sample_identify,
    source_context,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "writing-a-connector.md"


@functools.cache
def complete_examples() -> list[types.ModuleType]:
    """Each complete example as a module (in ``sys.modules``, where msgspec looks up the
    names in a Struct's annotations)."""
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.S | re.M)
    modules = []
    for i, source in enumerate(b for b in blocks if b.startswith("from __future__")):
        module = types.ModuleType(f"connector_guide_example_{i}")
        sys.modules[module.__name__] = module
        code = compile(source, f"{DOC.name}[complete example {i}]", "exec",
                       flags=__future__.annotations.compiler_flag, dont_inherit=True)
        exec(code, module.__dict__)  # noqa: S102 - our own documentation
        modules.append(module)
    return modules


def example(hook: str) -> types.ModuleType:
    [module] = [m for m in complete_examples() if hasattr(m, hook)]
    return module


def test_complete_examples_register() -> None:
    modules = complete_examples()
    assert len(modules) >= 2
    reg = registry(modules)  # pluggy checks hook and argument names
    names = {(c.kind, c.name) for c, _ in reg.all()}
    assert {("source", "acmehook"), ("destination", "acme")} <= names


def test_vendor_source_example() -> None:
    plugin = example("parse_events")
    reg = registry([plugin])
    ctx = source_context("acmehook", "acme-write-key", reg=reg)
    auth = {"Authorization": "Bearer acme-write-key"}
    assert authenticate_with(ctx, ingest_request("/connector/acmehook", b"[]", auth), reg).accepted
    assert not authenticate_with(ctx, ingest_request("/connector/acmehook", b"[]"), reg).accepted
    body = [
        {"id": "e1", "kind": "email.opened", "user": "u1", "at": "2026-01-01T10:00:00Z",
         "data": {"campaign": "c9"}},
        {"id": "e2", "kind": "email.opened"},  # no user: refused alone
    ]
    opened, refused = parse_with(ctx, ingest_request("/connector/acmehook", body, auth), reg)
    assert isinstance(opened, ParsedEvent) and isinstance(refused, RefusedEvent)
    assert msgspec.json.decode(opened.raw) == {
        "type": "track", "messageId": "acme-e1", "userId": "u1", "event": "email.opened",
        "properties": {"campaign": "c9"}, "timestamp": "2026-01-01T10:00:00Z",
    }
    assert (opened.event.messageId, opened.event.user_id) == ("acme-e1", "u1")
    assert refused.reason == "event e2: userId or anonymousId is required"
    with pytest.raises(BadRequest, match="not an Acme webhook body"):
        parse_with(ctx, ingest_request("/connector/acmehook", {"id": "e1"}, auth), reg)


def test_field_mapping_example() -> None:
    reg = registry([example("map_event")])
    settings = {"base_url": "https://api.acme.example", "api_key": "k"}
    ctx = destination_context("acme", settings, reg=reg)
    [delivery] = map_with(ctx, sample_identify(userId="u1"), reg).deliveries
    assert delivery.body == {"user_id": "u1", "email": "peter@example.com", "plan": "premium",
                             "origin": "hookyard"}
    no_email = sample_identify(userId="u1", traits={"plan": "free"})
    assert map_with(ctx, no_email, reg) == MapResult.skip(
        "skipped: field email missing ($.traits.email)"
    )
    overrides = {"email": "$.context.traits.email", "origin": "=web-shop"}
    moved = sample_identify(userId="u1", context={"traits": {"email": "p@example.com"}})
    ctx = destination_context("acme", {**settings, "fields": overrides}, reg=reg)
    [delivery] = map_with(ctx, moved, reg).deliveries
    assert (delivery.body["email"], delivery.body["origin"]) == ("p@example.com", "web-shop")
    with pytest.raises(msgspec.ValidationError, match=r"unknown field\(s\) \['emial'\]"):
        destination_context("acme", {**settings, "fields": {"emial": "$.email"}}, reg=reg)


def test_helper_descriptions_match_the_code() -> None:
    text = DOC.read_text()
    assert "deliver_with(ctx, deliveries, *, connect_timeout=2, total_timeout=5)" in text
    assert "`.raw_path`" in text and "hookyard.deliveries.send_in_order" in text
    assert "`core/errors.py`" in text or "core/errors.py" in text
    assert "hookyard/errors.py" not in text
