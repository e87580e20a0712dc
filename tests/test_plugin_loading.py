"""A broken plugin stops hookyard with one ``Error:`` line naming it, never pluggy's traceback.

Installed plugins are simulated without installing anything: a package and a ``*.dist-info``
directory (METADATA + entry_points.txt) in a temporary directory put on ``sys.path``, which is
how ``importlib.metadata`` finds any installed distribution. Plugin objects are registered the
way tests register plugins (``registry([...])``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest
from click.testing import CliRunner
from hookyard import hookimpl
from hookyard.cli import main
from hookyard.connectors import Connector, DestinationContext
from hookyard.deliveries import Delivery, DeliveryResult
from hookyard.errors import ConfigError
from hookyard.plugins import make_plugin_manager
from hookyard.testing import registry

ROOT = Path(__file__).resolve().parent.parent
LABEL = "plugin 'broken' (hookyard_broken.plugin, distribution hookyard-broken 0.1.0)"
MISSPELT = """\
from hookyard import hookimpl


@hookimpl
def map_events(destination, event, raw):
    return None
"""
WRONG_ARGUMENT = """\
from hookyard import hookimpl


@hookimpl
async def deliver(destination, deliveries, http):
    return []
"""
IMPORT_FAILS = """\
from hookyard import hookimpl
import hookyard_no_such_dependency
"""
BROKEN = {
    "misspelt": (MISSPELT, f"{LABEL}: unknown hook 'map_events' (did you mean 'map_event'?)"),
    "argument": (
        WRONG_ARGUMENT,
        f"{LABEL}: hook 'deliver' has no argument 'http' (it takes: destination, deliveries, "
        "client)",
    ),
    "import": (
        IMPORT_FAILS,
        f"{LABEL}: could not be imported: ModuleNotFoundError: No module named "
        "'hookyard_no_such_dependency' (at ",
    ),
}


def write_distribution(where: Path, plugin_source: str, name: str = "broken") -> Path:
    """``hookyard_<name>`` with entry point ``<name>``, as pip would leave it in site-packages."""
    package = where / f"hookyard_{name}"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text(plugin_source)
    info = where / f"hookyard_{name}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: hookyard-{name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[hookyard]\n{name} = hookyard_{name}.plugin\n")
    return where


@pytest.fixture
def install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Path]]:
    """``install(source, name="broken")``: that distribution on ``sys.path`` for this test."""
    names: list[str] = []

    def put(source: str, name: str = "broken") -> Path:
        where = write_distribution(tmp_path / f"site-{name}", source, name)
        monkeypatch.syspath_prepend(str(where))
        names.append(f"hookyard_{name}")
        return where

    yield put
    for module in [m for m in sys.modules if m.split(".")[0] in names]:
        del sys.modules[module]


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_installed_plugin_is_one_line_naming_it(
    case: str, install: Callable[[str], Path]
) -> None:
    source, expected = BROKEN[case]
    install(source)
    with pytest.raises(ConfigError) as err:
        make_plugin_manager()
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)
    if case == "import":  # where it failed, to go and look
        assert str(err.value).endswith(f"{os.sep}hookyard_broken{os.sep}plugin.py:2)")


def test_two_distributions_with_one_entry_point_name_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pluggy loads the first and skips the other silently (found by an outside audit)."""
    for package in ("hookyard_acme", "hookyard_acme_dest"):
        where = tmp_path / f"site-{package}"
        (where / package).mkdir(parents=True)
        (where / package / "__init__.py").write_text("")
        (where / package / "plugin.py").write_text("")
        info = where / f"{package}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(f"[hookyard]\nacme = {package}.plugin\n")
        monkeypatch.syspath_prepend(str(where))
    with pytest.raises(ConfigError) as err:
        make_plugin_manager()
    message = str(err.value)
    assert message.startswith("two plugins use the entry-point name 'acme': plugin 'acme' (")
    assert "distribution hookyard-acme 0.1.0" in message
    assert "distribution hookyard-acme-dest 0.1.0" in message and "only one of them would load" in message


@pytest.mark.parametrize("command", [["plugins"], ["check-config"], ["serve", "--port", "0"],
                                     ["worker"]])
def test_every_command_stops_with_one_error_line(
    command: list[str], install: Callable[[str], Path], tmp_path: Path
) -> None:
    """Even a config that does not use the broken plugin: a misspelt hook is never ignored."""
    install(MISSPELT)
    config = tmp_path / "hookyard.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\nadmin_token = "test-admin-token"\n'
        '[[sources]]\nname = "web"\nplugin = "segment"\nwrite_key = "test-write-key"\n'
    )
    args = command if command == ["plugins"] else [*command, "--config", str(config)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: {BROKEN['misspelt'][1]}\n"
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_the_real_command_prints_no_traceback(tmp_path: Path) -> None:
    where = write_distribution(tmp_path / "site", WRONG_ARGUMENT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(where), *sys.path])}
    env.pop("HOOKYARD_CONFIG", None)
    run = subprocess.run([sys.executable, "-m", "hookyard", "plugins"], capture_output=True,
                         text=True, env=env, timeout=60, cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr == f"Error: {BROKEN['argument'][1]}\n" and run.stdout == ""


# -- plugin objects (as tests and Runtime.build(config, plugins) register them) ----------------
class Misspelt:
    @hookimpl
    def register_connectors(self) -> list[Connector]:
        return [Connector(name="misspelt", kind="destination")]

    @hookimpl
    def map_events(self, destination: DestinationContext) -> None: ...

    @hookimpl
    def delivery(self, destination: DestinationContext) -> None: ...


class WrongArgument:
    @hookimpl
    def deliver(self, destination: DestinationContext, deliveries: list[Delivery],
                http: Any, retries: int) -> list[DeliveryResult]:
        return []


class RegisterFails:
    @hookimpl
    def register_connectors(self) -> list[Connector]:
        raise KeyError("base_url")


def test_plugin_objects_are_named_with_every_unknown_hook() -> None:
    with pytest.raises(ConfigError) as err:
        registry([Misspelt()])
    assert str(err.value) == (
        "plugin 'Misspelt' object: unknown hook 'delivery' (did you mean 'deliver'?); "
        "unknown hook 'map_events' (did you mean 'map_event'?)"
    )


def test_an_unknown_hook_without_a_close_name_lists_the_hooks() -> None:
    class Odd:
        @hookimpl
        def frobnicate(self) -> None: ...

    with pytest.raises(ConfigError, match=r"unknown hook 'frobnicate' \(hookyard's hooks: "
                                          r"authenticate, deliver, map_event, parse_events, "):
        registry([Odd()])


def test_wrong_argument_names_are_named() -> None:
    with pytest.raises(ConfigError) as err:
        registry([WrongArgument()])
    message = str(err.value)
    assert message.startswith("plugin 'WrongArgument' object: hook 'deliver' has no arguments ")
    assert "'http'" in message and "'retries'" in message
    assert message.endswith("(it takes: destination, deliveries, client)")


def test_register_connectors_raising_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^plugin 'RegisterFails' object: register_connectors failed: "
                                          r"KeyError: 'base_url' \(at .*test_plugin_loading"):
        registry([RegisterFails()])


class Registers:
    """A plugin whose register_connectors answers what it is given."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    @hookimpl
    def register_connectors(self) -> Any:
        return self.answer

    def __repr__(self) -> str:
        return "Registers"


class Defaults(msgspec.Struct, forbid_unknown_fields=True):
    batch: Annotated[int, msgspec.Meta(ge=1, le=50)] = 500


class TextDefault(msgspec.Struct):
    timeout: int = "5"  # type: ignore[assignment]


@pytest.mark.parametrize(("answer", "message"), [
    (None, "register_connectors returned None, not a list of Connector (a missing return?)"),
    ([Connector(name="d", kind="destination", settings=Defaults)],
     "connector 'd': settings field 'batch' has a default its own type refuses (Expected `int` <= 50)"),
    ([Connector(name="d", kind="destination", settings=TextDefault)],
     "connector 'd': settings field 'timeout' has a default its own type refuses (Expected `int`, got `str`)"),
    ([Connector(name="d", kind="destination", batch_size=0)],
     "connector 'd': batch_size must be a whole number >= 1, not 0"),
    ([Connector(name="Broken One", kind="destination")],  # the plugin-author re-check
     "connector name 'Broken One' is what a config's plugin = \"...\" names: lower-case letters,"
     " digits, '-', '_' or '.', starting with a letter or digit, at most 64 characters"),
    ([Connector(name="d", kind="destination", paths=("/in",))],
     "destination connector 'd' has paths: only a source receives requests (a destination's"
     " own routes: the register_routes hook)"),
])
def test_register_connectors_mistakes_stop_loading(answer: Any, message: str) -> None:
    """Found by the plugin-author audit: a forgotten return made the plugin 'not installed';
    a settings default its own type refuses passed check-config and reached the plugin; a
    batch_size of 0 was taken as 1."""
    with pytest.raises(ConfigError) as err:
        registry([Registers(answer)])
    assert str(err.value).endswith(message), str(err.value)


class Unwrapped:
    """A map_event meant to run around every destination's, without wrapper=True."""

    @hookimpl
    def map_event(self, destination: Any, event: Any, raw: Any) -> Any:
        raw["context"] = {"enriched": True}
        yield

    def __repr__(self) -> str:
        return "Unwrapped"


def test_a_step_hook_that_would_never_be_called_stops_loading() -> None:
    """Plugin-author audit: a generator map_event without wrapper=True in a plugin owning no
    destination loaded silently and never ran."""
    with pytest.raises(ConfigError) as err:
        registry([Unwrapped()]).check_step_owners()
    assert str(err.value).endswith(
        ": implements map_event but registers no destination connector, so it would never be"
        " called: register one, or make it a wrapper of every destination's map_event"
        " (@hookimpl(wrapper=True), a generator that yields once)"), str(err.value)


def test_an_unhashable_plugin_object_stops_loading() -> None:
    """Found by the plugin-author audit: a SimpleNamespace registered, then every hook call
    failed with 'unhashable type' (ingest answered each request with it)."""
    from types import SimpleNamespace

    with pytest.raises(ConfigError, match="a plugin must be hashable .* not a SimpleNamespace"):
        registry([SimpleNamespace(register_connectors=lambda: [])])


def test_built_in_plugins_load_cleanly() -> None:
    names = {name for name, _ in make_plugin_manager().list_name_plugin()}
    assert {"profiles", "segment", "pushwoosh", "novu"} <= names


@pytest.mark.parametrize("doc", ["plugin-hooks.md", "configuration.md"])
def test_documented_plugin_errors_are_real(doc: str, tmp_path: Path) -> None:
    """The ``Error: plugin 'relay' ...`` lines of the docs are what hookyard prints."""
    text = (ROOT / "docs" / doc).read_text()
    shown = [line for line in text.splitlines() if line.startswith("Error: plugin 'relay' (")]
    assert shown, f"docs/{doc} shows no plugin error"
    sources = {"unknown hook": MISSPELT, "has no argument": WRONG_ARGUMENT,
               "could not be imported": "from hookyard import hookimpl\n\nimport requests_not_here\n"}
    for i, line in enumerate(shown):
        [source] = [src for problem, src in sources.items() if problem in line]
        where = str(write_distribution(tmp_path / f"site{i}", source, "relay"))
        sys.path.insert(0, where)
        try:
            with pytest.raises(ConfigError) as err:
                make_plugin_manager()
        finally:
            sys.path.remove(where)
            for module in [m for m in sys.modules if m.split(".")[0] == "hookyard_relay"]:
                del sys.modules[module]
        got = f"Error: {err.value}"
        if "could not be imported" in line:  # another module and path: the same shape
            assert got.startswith(line.split("No module named")[0]) and line.endswith(".py:3)")
            assert got.endswith(f"{os.sep}hookyard_relay{os.sep}plugin.py:3)")
        else:
            assert got == line
