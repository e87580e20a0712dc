"""The documentation stays true to the code (as datasette's docs tests do).

* every hookspec has a ``## <hookname>`` section in docs/plugin-hooks.md and a
  ``test_<hookname>`` in tests/test_plugin_hooks.py, type annotations and a docstring; every
  Python example there imports, and registers with a plugin manager (hook and argument names
  checked by pluggy);
* every installed connector's settings Struct (and every Struct nested in it) forbids unknown
  fields;
* docs/configuration.md documents exactly the fields of the config Structs, every
  ``[section] key`` the docs name exists, its complete example passes ``Runtime.build``, and
  the error messages it shows are the ones hookyard prints;
* docs/modules.md names every core module, docs/architecture.md every storage table.
"""

from __future__ import annotations
import __future__

import ast
import inspect
import re
import sqlite3
import tomllib
import types
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hookyard import hookspecs
from hookyard.config import (
    Config,
    DeliverySettings,
    DestinationConfig,
    ServerSettings,
    SourceConfig,
    StorageSettings,
    parse_config,
)
from hookyard.errors import ConfigError
from hookyard.plugins import ConnectorRegistry, make_plugin_manager
from hookyard.profiles.mapping import ProfileSettings
from hookyard.runtime import Runtime
from hookyard.schema import migrate
from hookyard.testing import registry

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OWN_DOCS = [
    "plugin-hooks.md",
    "architecture.md",
    "modules.md",
    "configuration.md",
    "operations.md",
    "quickstart.md",
]


def read(name: str) -> str:
    return (DOCS / name).read_text()


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


# -- plugin hooks ----------------------------------------------------------------------------------
def hookspec_functions() -> dict[str, Any]:
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if inspect.isfunction(fn) and hasattr(fn, "hookyard_spec")
    }


def test_there_are_hookspecs() -> None:
    assert {
        "register_connectors",
        "authenticate",
        "parse_events",
        "map_event",
        "deliver",
        "register_routes",
        "startup",
        "shutdown",
    } <= set(hookspec_functions())


@pytest.mark.parametrize("hook", sorted(hookspec_functions()))
def test_hookspec_is_documented_and_tested(hook: str) -> None:
    sections = re.findall(r"^## (\S+)\s*$", read("plugin-hooks.md"), re.M)
    assert hook in sections, f"docs/plugin-hooks.md has no '## {hook}' section"
    tree = ast.parse((ROOT / "tests" / "test_plugin_hooks.py").read_text())
    tests = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert f"test_{hook}" in tests, f"tests/test_plugin_hooks.py has no test_{hook}"


def test_documented_hooks_exist() -> None:
    sections = re.findall(r"^## ([a-z_]+)\s*$", read("plugin-hooks.md"), re.M)
    assert sections, "no hook sections found"
    unknown = set(sections) - set(hookspec_functions())
    assert not unknown, f"docs/plugin-hooks.md documents hooks that do not exist: {unknown}"


@pytest.mark.parametrize("hook", sorted(hookspec_functions()))
def test_hookspec_has_annotations_and_docstring(hook: str) -> None:
    fn = hookspec_functions()[hook]
    assert inspect.getdoc(fn), f"hookspec {hook} has no docstring"
    sig = inspect.signature(fn)
    missing = [
        p for p, param in sig.parameters.items() if param.annotation is inspect.Parameter.empty
    ]
    assert not missing, f"hookspec {hook}: parameters without a type annotation: {missing}"
    assert sig.return_annotation is not inspect.Signature.empty, f"hookspec {hook}: no return type"


def test_plugin_hook_examples_register() -> None:
    """Each ```python block is self-contained: it runs, and its hookimpls pass pluggy's checks
    (known hook names, arguments a subset of the hookspec's, wrappers are generators)."""
    blocks = code_blocks(read("plugin-hooks.md"), "python")
    assert len(blocks) >= 8
    registered = 0
    for i, source in enumerate(blocks):
        module = types.ModuleType(f"plugin_hooks_example_{i}")
        flags = __future__.annotations.compiler_flag
        code = compile(
            source,
            f"docs/plugin-hooks.md[python block {i}]",
            "exec",
            flags=flags,
            dont_inherit=True,
        )
        exec(code, module.__dict__)  # noqa: S102 - our own documentation
        has_impls = any(hasattr(v, "hookyard_impl") for v in vars(module).values())
        if has_impls:
            pm = make_plugin_manager([module], load_entry_points=False)
            ConnectorRegistry(pm)  # register_connectors, if any, returns valid connectors
            registered += 1
    assert registered >= 6


# -- connector settings -----------------------------------------------------------------------------
def _structs(t: Any, seen: set[type]) -> list[msgspec.inspect.StructType]:
    """Every Struct type reachable from a msgspec.inspect type."""
    found = []
    if isinstance(t, msgspec.inspect.StructType):
        if t.cls in seen:
            return []
        seen.add(t.cls)
        found.append(t)
    if isinstance(t, msgspec.inspect.Field):
        return _structs(t.type, seen)
    if isinstance(t, msgspec.Struct):
        for name in t.__struct_fields__:
            value = getattr(t, name)
            items = value if isinstance(value, tuple) else (value,)
            for item in items:
                if isinstance(item, msgspec.inspect.Type | msgspec.inspect.Field):
                    found += _structs(item, seen)
    return found


def test_connector_settings_forbid_unknown_fields() -> None:
    reg = registry()
    connectors = reg.all()
    assert {c.name for c, _ in connectors} >= {"profiles", "segment", "pushwoosh"}
    for connector, plugin in connectors:
        structs = _structs(msgspec.inspect.type_info(connector.settings), set())
        loose = [s.cls.__qualname__ for s in structs if not s.forbid_unknown_fields]
        assert not loose, (
            f"{connector.kind} connector {connector.name!r} (plugin {plugin}): settings Structs "
            f"without forbid_unknown_fields=True: {loose}"
        )


# -- configuration ---------------------------------------------------------------------------------
SECTIONS: dict[str, type[msgspec.Struct]] = {
    "[server]": ServerSettings,
    "[storage]": StorageSettings,
    "[[sources]]": SourceConfig,
    "[[destinations]]": DestinationConfig,
    "[destinations.delivery]": DeliverySettings,
    '[destinations.settings] of plugin = "profiles"': ProfileSettings,
}
FREE_SECTIONS = {"sources.settings", "destinations.settings"}  # each connector's own Struct


def documented_keys(text: str) -> dict[str, set[str]]:
    """``| `key` |`` table rows under each ``## `[section]` `` heading of configuration.md."""
    found: dict[str, set[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            spans = re.findall(r"`([^`]+)`", line)
            title = " of ".join(spans[:2]) if "profiles" in line else (spans[0] if spans else "")
            current = title if title in SECTIONS else None
            if current:
                found.setdefault(current, set())
            continue
        row = re.match(r"^\|\s*`([a-z_]+)`\s*\|", line)
        if current and row:
            found[current].add(row.group(1))
    return found


def test_configuration_documents_every_setting() -> None:
    found = documented_keys(read("configuration.md"))
    for section, struct in SECTIONS.items():
        assert section in found, f"docs/configuration.md has no heading for `{section}`"
        fields = set(struct.__struct_fields__)
        assert found[section] == fields, (
            f"docs/configuration.md {section}: undocumented {sorted(fields - found[section])}, "
            f"not settings {sorted(found[section] - fields)}"
        )


@pytest.mark.parametrize("doc", OWN_DOCS)
def test_named_config_keys_exist(doc: str) -> None:
    """Every `[section]` or `[section] key` the docs name is real."""
    structs: dict[str, type[msgspec.Struct]] = {
        "server": ServerSettings,
        "storage": StorageSettings,
        "sources": SourceConfig,
        "destinations": DestinationConfig,
        "destinations.delivery": DeliverySettings,
    }
    for section, key in re.findall(r"`\[\[?([a-z_.]+)\]\]?(?: ([a-z_]+))?`", read(doc)):
        if section == "redacted":  # what the logs print instead of a secret
            continue
        assert section in structs or section in FREE_SECTIONS, f"{doc}: unknown section [{section}]"
        if key and section in structs:
            assert key in structs[section].__struct_fields__, (
                f"{doc}: unknown key [{section}] {key}"
            )


@pytest.mark.parametrize("doc", OWN_DOCS)
def test_toml_examples_are_valid(doc: str) -> None:
    """Every TOML block parses, and its tables have only known keys (plugin settings aside)."""
    for block in code_blocks(read(doc), "toml"):
        data = tomllib.loads(block)
        if "project" in data or "tool" in data:  # a pyproject.toml snippet
            continue
        msgspec.convert({k: v for k, v in data.items()}, Config)


def test_complete_example_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    complete = [
        b for b in code_blocks(read("configuration.md"), "toml") if b.startswith("# hookyard.toml")
    ]
    assert len(complete) == 1, "configuration.md needs one block starting '# hookyard.toml'"
    for var in re.findall(r'"env:([A-Z0-9_]+)"', complete[0]):
        monkeypatch.setenv(var, f"{var.lower()}-test-value")
    data = tomllib.loads(complete[0])
    data["server"]["data_dir"] = str(tmp_path)
    config = parse_config(data, "hookyard.toml")
    plugins = {d.plugin for d in config.destinations}
    assert {"profiles", "pushwoosh", "novu"} <= plugins
    assert any(d.filter for d in config.destinations) and any(
        d.trigger for d in config.destinations
    )
    rt = Runtime.build(config)
    assert rt.destinations and rt.sources


BAD_CONFIGS: list[dict[str, Any]] = [
    {"storage": {"retention_dayz": 7}},
    {"sources": [{"name": "web", "plugin": "segment", "write_key": "env:SEGMENT_WRITE_KEY"}]},
    {"destinations": [{"name": "profiles", "plugin": "profiles", "delivery": {"concurrency": 0}}]},
    {
        "sources": [{"name": "web", "plugin": "segment", "write_key": "wk_test_key"}],
        "destinations": [
            {
                "name": "pushwoosh",
                "plugin": "pushwoosh",
                "sources": ["web"],
                "settings": {"api_key": "k", "applicaton": "XXXXX-XXXXX"},
            }
        ],
    },
    {
        "sources": [{"name": "web", "plugin": "segment", "write_key": "wk_test_key"}],
        "destinations": [
            {
                "name": "novu",
                "plugin": "novu",
                "sources": ["web"],
                "trigger": '(type = "track" or type = "identify" and userId exists',
                "settings": {"api_key": "k"},
            }
        ],
    },
]


@pytest.mark.parametrize("case", range(len(BAD_CONFIGS)))
def test_documented_errors_are_real(
    case: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SEGMENT_WRITE_KEY", raising=False)
    data = {
        "server": {"data_dir": str(tmp_path), "admin_token": "test-admin-token"},
        **BAD_CONFIGS[case],
    }
    with pytest.raises(ConfigError) as err:
        Runtime.build(parse_config(data, "hookyard.toml"))
    line = f"Error: {err.value}"
    assert line in read("configuration.md"), f"docs/configuration.md should show: {line}"


# -- architecture ----------------------------------------------------------------------------------
def test_the_code_map_names_every_module() -> None:
    text = read("modules.md")
    core = ROOT / "core"
    names = [f"{p.stem}.py" for p in core.glob("*.py") if p.stem not in ("__init__", "__main__")]
    names += [f"{p.name}/" for p in core.iterdir() if (p / "__init__.py").exists()]
    missing = [n for n in names if f"`{n}`" not in text]
    assert not missing, f"docs/modules.md does not describe: {missing}"


def test_architecture_names_every_table() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    assert "inbox" in tables
    text = read("architecture.md")
    missing = [t for t in tables if f"`{t}`" not in text]
    assert not missing, f"docs/architecture.md does not describe tables: {missing}"


# -- links -----------------------------------------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", OWN_DOCS)
def test_anchor_links_resolve(doc: str) -> None:
    """Every ``(file.md#anchor)`` / ``(#anchor)`` link in our docs names a real heading."""
    for target, anchor in re.findall(r"\]\(([a-z/_.-]*)#([^)]+)\)", read(doc)):
        path = (DOCS / target) if target else DOCS / doc
        if not path.exists():
            continue  # a document of another area, not written yet
        headings = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
        assert anchor in {slug(h) for h in headings}, (
            f"{doc}: no heading for #{anchor} in {path.name}"
        )
