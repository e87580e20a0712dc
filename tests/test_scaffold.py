"""``hookyard new-plugin``: the scaffolded packages install with pip and their own generated
tests pass (in a throwaway venv layered on this environment, so nothing is left installed)."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hookyard.cli import main
from hookyard.errors import ConfigError
from hookyard.scaffold import files, module_name, scaffold

ROOT = Path(__file__).resolve().parent.parent


def can_build_without_isolation() -> bool:
    """setuptools >= 70.1 builds PEP 660 editables by itself (older ones need ``wheel``)."""
    try:
        import setuptools
    except ImportError:
        return False
    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _see_this_environment(venv: Path) -> None:
    """Let ``venv`` import what this environment has (hookyard, pytest, setuptools).

    ``--system-site-packages`` gives it the base interpreter's packages only: when this test
    runs in a virtual environment (a fresh ``python -m venv`` and the README's install), they
    are in that environment instead, so its site directories are added too, .pth files and
    all (the editable installs are .pth files).
    """
    if sys.prefix == sys.base_prefix:
        return
    inner = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    lines = [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]
    (inner / "_hookyard_test_outer_env.pth").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "name", ["", "Acme", "1acme", "acme crm", "acme--crm", "acme-", "a" * 41, "../acme"]
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="plugin name"):
        files(name, "destination")


def test_a_too_long_name_says_so() -> None:
    """Plugin-author audit: a 65-character name was refused for its letters."""
    with pytest.raises(ConfigError, match="is 65 characters long: at most 40"):
        files("a" * 65, "destination")


def test_files_of_each_kind() -> None:
    assert module_name("acme-crm") == "hookyard_acme_crm"
    dest = files("acme-crm", "destination")
    assert sorted(dest) == [
        "README.md",
        "hookyard_acme_crm/__init__.py",
        "hookyard_acme_crm/plugin.py",
        "pyproject.toml",
        "tests/test_acme_crm_destination.py",
    ]
    assert 'acme-crm = "hookyard_acme_crm.plugin"' in dest["pyproject.toml"]
    assert "forbid_unknown_fields=True" in dest["hookyard_acme_crm/plugin.py"]
    source = files("acme", "source")["hookyard_acme/plugin.py"]
    assert 'PATH = "/connector/acme"' in source and "def parse_events" in source
    with pytest.raises(ConfigError, match="kind"):
        files("acme", "sink")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["destination", "source"])
def test_the_test_extra_brings_what_the_tests_import(kind: str) -> None:
    """``pip install hookyard`` brings neither pytest nor httpx: the generated tests (and
    hookyard.testing) need them, so the package's ``test`` extra does, and the README says
    to install it."""
    generated = files("acme", kind)  # type: ignore[arg-type]
    project = tomllib.loads(generated["pyproject.toml"])["project"]
    extra = [re.split(r"[<>=\[ ]", req)[0] for req in project["optional-dependencies"]["test"]]
    assert sorted(extra) == ["httpx", "pytest"]
    imported = {
        node.names[0].name.split(".")[0] if isinstance(node, ast.Import) else node.module.split(".")[0]
        for text in generated.values() if text.startswith('"""')
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.module)
    }
    third_party = imported - set(sys.stdlib_module_names) - {"hookyard", "msgspec", "hookyard_acme"}
    assert third_party <= set(extra), third_party
    assert "pip install -e '.[test]'" in generated["README.md"]


def test_destination_settings_and_deliver() -> None:
    """``base_url`` (the name preview joins with a delivery's path), and a deliver hook that
    keeps each user's order when it sends a batch as separate requests."""
    plugin = files("acme", "destination")["hookyard_acme/plugin.py"]
    assert "    base_url: Annotated[str" in plugin and "    url:" not in plugin
    assert "from hookyard.deliveries import Delivery, DeliveryResult, MapResult, send_in_order" in plugin
    assert "return await send_in_order(deliveries, send)" in plugin
    tests = files("acme", "destination")["tests/test_acme_destination.py"]
    assert "def test_deliver_keeps_each_users_order(" in tests


def test_docs_install_line_installs_the_test_extra() -> None:
    doc = (ROOT / "docs" / "writing-a-connector.md").read_text()
    assert "pip install -e './hookyard-acme[test]'" in doc
    commands = re.findall(r"^hookyard new-plugin (\S+)", doc, re.M)
    assert len(commands) == len(set(commands)) >= 2, "each example scaffolds its own package"


@pytest.mark.parametrize(("name", "why"), [
    ("novu", "an installed plugin is named so (hookyard_novu.plugin)"),
    ("segment", "an installed plugin is named so"),
])
def test_a_name_that_is_taken_is_refused(name: str, why: str, tmp_path: Path) -> None:
    """The new package would be shadowed by the installed one, or skipped when loading
    (found by an outside audit: its generated tests then failed)."""
    with pytest.raises(ConfigError, match=f"plugin name '{name}' is taken: {re.escape(why)}"):
        scaffold(name, "destination", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_connector_name_an_installed_plugin_registers_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Source-author audit: ``hookyard-acme`` (entry point ``acme``) registers the connector
    ``acme-crm``; ``new-plugin acme-crm`` was accepted, and once installed every command
    stopped on a connector registered by two plugins."""
    from hookyard import hookimpl, plugins
    from hookyard.connectors import Connector

    class Acme:
        @hookimpl
        def register_connectors(self) -> list[Connector]:
            return [Connector(name="acme-crm", kind="destination")]

        @hookimpl
        def deliver(self, destination: Any, deliveries: Any, client: Any) -> Any:
            return []

    real = plugins.make_plugin_manager
    monkeypatch.setattr(plugins, "make_plugin_manager", lambda: real([Acme()]))
    with pytest.raises(ConfigError, match="plugin name 'acme-crm' is taken: the installed"
                                          " plugin '.*' registers a connector named so"):
        scaffold("acme-crm", "destination", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_creates_the_package_and_refuses_to_overwrite(tmp_path: Path) -> None:
    # not "acme": a developer who followed writing-a-connector.md has hookyard-acme installed
    runner = CliRunner()
    result = runner.invoke(main, ["new-plugin", "scaffold-cli", "--kind", "source", "--dir",
                                  str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "hookyard_scaffold_cli" in result.output
    assert (tmp_path / "hookyard-scaffold-cli" / "hookyard_scaffold_cli" / "plugin.py").is_file()
    again = runner.invoke(main, ["new-plugin", "scaffold-cli", "--dir", str(tmp_path)])
    assert again.exit_code != 0 and "already exists" in again.output
    bad = runner.invoke(main, ["new-plugin", "Acme", "--dir", str(tmp_path)])
    assert bad.exit_code != 0 and "plugin name" in bad.output


def test_generated_packages_install_and_their_tests_pass(tmp_path: Path) -> None:
    dest = scaffold("scaffold-dest", "destination", tmp_path)
    src = scaffold("scaffold-src", "source", tmp_path)
    ruff = shutil.which("ruff")
    if ruff:  # the generated code passes the project's own lint rules
        lint = subprocess.run(
            [
                ruff,
                "check",
                "--isolated",
                "--line-length",
                "100",
                "--select",
                "E,F,W,I,B,UP",
                "--ignore",
                "E501,B905",
                str(dest),
                str(src),
            ],
            capture_output=True,
            text=True,
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
    )
    python = str(venv / "bin" / "python")
    _see_this_environment(venv)
    # without isolation pip reuses this environment's setuptools: ~10 s faster than a build env
    isolation = ["--no-build-isolation"] if can_build_without_isolation() else []
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "-q",
            "--no-deps",
            *isolation,
            "-e",
            str(dest),
            "-e",
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    run = subprocess.run(
        [
            python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(dest),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "10 passed" in run.stdout
    plugins = subprocess.run(
        [python, "-m", "hookyard", "plugins"], capture_output=True, text=True, timeout=60
    )
    assert "scaffold-dest" in plugins.stdout and "scaffold-src" in plugins.stdout
