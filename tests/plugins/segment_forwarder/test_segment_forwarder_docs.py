"""docs/connectors/segment.md stays true to the forwarder: its TOML examples build and the
settings table lists exactly the forwarder's settings and limits."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from hookyard.config import parse_config
from hookyard.runtime import Runtime
from hookyard_segment.forwarder import (
    MAX_EVENT_BYTES,
    MAX_REQUEST_BYTES,
    OVERSIZE_ERROR,
    SegmentForwarderSettings,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "connectors" / "segment.md"
TEXT = DOC.read_text()
BLOCKS = re.findall(r"^```toml\n(.*?)^```", TEXT, re.S | re.M)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"toml-{i}" for i in range(len(BLOCKS))])
def test_every_config_example_builds(
    block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in re.findall(r'"env:([A-Z0-9_]+)"', block):
        monkeypatch.setenv(var, f"{var.lower()}-test-value")
    data = tomllib.loads(block)
    data.setdefault("server", {})["data_dir"] = str(tmp_path)
    assert Runtime.build(parse_config(data, DOC.name)).sources


def test_the_forwarder_section_matches_the_code() -> None:
    section = TEXT[TEXT.index("## Destination: the forwarder") :]
    table = section[section.index("| setting | default | meaning |") :]
    table = table[: table.index("\n\n")]
    assert set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M)) == set(
        SegmentForwarderSettings.__struct_fields__
    )
    assert f"{MAX_REQUEST_BYTES:,} bytes" in section and f"{MAX_EVENT_BYTES:,} bytes" in section
    assert OVERSIZE_ERROR in section
    assert any(
        d.get("plugin") == "segment"
        for b in BLOCKS
        for d in tomllib.loads(b).get("destinations", [])
    )
