"""docs/connectors/pushwoosh.md stays true to the code: every TOML example is a config hookyard
starts with, and the settings table lists exactly the destination's settings."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from hookyard.config import parse_config
from hookyard.runtime import Runtime
from hookyard_pushwoosh.settings import PushwooshSettings, PushwooshSourceSettings

DOC = Path(__file__).resolve().parents[3] / "docs" / "connectors" / "pushwoosh.md"
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
    rt = Runtime.build(parse_config(data, DOC.name))
    assert rt.sources


def test_the_examples_cover_both_directions() -> None:
    plugins = {
        (kind, item["plugin"])
        for block in BLOCKS
        for kind in ("sources", "destinations")
        for item in tomllib.loads(block).get(kind, [])
    }
    assert {("sources", "pushwoosh"), ("destinations", "pushwoosh")} <= plugins


def settings_table() -> set[str]:
    table = TEXT[TEXT.index("| setting | default | meaning |") :]
    table = table[: table.index("\n\n")]
    return set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))


def test_the_settings_table_lists_every_setting() -> None:
    assert settings_table() == set(PushwooshSettings.__struct_fields__)
    assert set(PushwooshSourceSettings.__struct_fields__) == {"events"}
    assert "`events`" in TEXT
