"""``hookyard send-test`` against a real running server: defaults from the config / data dir,
where each event went, and one clear line with a non-zero exit on every failure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from hookyard.cli import main
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer, free_port

from .kit import ADMIN, KEY

Start = Callable[..., HookyardServer]


def send_test(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["send-test", "--wait", "5", *args])
    return result.exit_code, result.stdout, result.stderr


def test_dead_letters_are_shown_and_fail(server: HookyardServer) -> None:
    code, out, err = send_test("--url", server.url, "--write-key", KEY, "--admin-token", ADMIN)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("sent identify") and lines[0].endswith("-> stored (HTTP 200)")
    assert lines[1].startswith("sent track")
    assert sum("-> profiles" in line and " done " in line for line in lines) == 2
    assert sum("-> forward" in line and " dead " in line and "HTTP 400" in line
               for line in lines) == 2
    assert f"{server.url}/ui/events/send-test-" in out
    assert err.strip() == "Error: 2 deliveries failed (dead letters: `hookyard dlq list`)"
    stored = server.api("/api/events", params={"user_id": "hookyard-send-test"}).json()["items"]
    assert {e["event"]["type"] for e in stored} == {"identify", "track"}


def test_destination_sends_to_that_one_only(server: HookyardServer, peer: FakeServer,
                                            tmp_path: Path) -> None:
    """Newcomer audit: the test user reached every real vendor. With --destination only that
    one gets it; given the config, the others are named off, which the Segment forwarder
    obeys too (it hands "All": false on)."""
    config = tmp_path / "hookyard.toml"
    config.write_text(f'[server]\nport = {server.url.rsplit(":", 1)[1]}\nadmin_token = "{ADMIN}"\n'
                      f'[[sources]]\nname = "web"\nplugin = "segment"\nwrite_key = "{KEY}"\n'
                      '[[destinations]]\nname = "profiles"\nplugin = "profiles"\n'
                      'sources = ["web"]\n[[destinations]]\nname = "forward"\nplugin = "segment"\n'
                      'sources = ["web"]\n[destinations.settings]\nwrite_key = "k"\n')
    before = len(peer.requests)
    code, out, err = send_test("--config", str(config), "--destination", "profiles",
                               "--user-id", "only-profiles")
    assert code == 0, (out, err)
    assert sum("-> profiles" in line and " done " in line for line in out.splitlines()) == 2
    assert sum("-> forward" in line and " filtered " in line for line in out.splitlines()) == 2
    assert len(peer.requests) == before  # the forwarder sent nothing
    code, out, err = send_test("--config", str(config), "--destination", "nope")
    assert code == 1 and "no destination named 'nope' connected to the source" in err
    ignoring = config.read_text().replace('plugin = "segment"\nsources = ["web"]\n',
                                          'plugin = "segment"\nsources = ["web"]\n'
                                          'honor_integrations = false\n')
    config.write_text(ignoring)
    code, out, err = send_test("--config", str(config), "--destination", "profiles")
    assert code == 1 and "forward ignores the events' integrations" in err
    assert len(peer.requests) == before


def test_defaults_come_from_the_config_file(hookyard_server: Start, tmp_path: Path) -> None:
    port = free_port()
    srv = hookyard_server({"server": {"port": port, "admin_token": ADMIN},
                           "sources": [{"name": "app", "plugin": "segment", "write_key": KEY}],
                           "destinations": [{"name": "profiles", "plugin": "profiles",
                                             "sources": ["app"]}]})
    config = tmp_path / "hookyard.toml"
    config.write_text(f'[server]\nport = {port}\nadmin_token = "{ADMIN}"\n'
                      f'data_dir = "{tmp_path / "unused"}"\n\n'
                      f'[[sources]]\nname = "app"\nplugin = "segment"\nwrite_key = "{KEY}"\n')
    code, out, err = send_test("--config", str(config), "--user-id", "cfg-user")
    assert code == 0, err
    assert out.count("-> profiles") == 2 and " done " in out and err == ""
    assert srv.api("/api/subscribers/cfg-user").status_code == 200
    assert not (tmp_path / "unused").exists()  # send-test reads, never creates


def test_source_wins_over_a_write_key_left_in_the_environment(
        hookyard_server: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the re-check: an exported $HOOKYARD_WRITE_KEY beat an explicit --source, and
    the events were stored under another source."""
    port = free_port()
    other = "other-source-key-1"
    sources = [{"name": "app", "plugin": "segment", "write_key": KEY},
               {"name": "hook", "plugin": "segment", "write_key": other}]
    srv = hookyard_server({"server": {"port": port, "admin_token": ADMIN}, "sources": sources})
    config = tmp_path / "hookyard.toml"
    config.write_text(f'[server]\nport = {port}\nadmin_token = "{ADMIN}"\n'
                      + "".join(f'\n[[sources]]\nname = "{s["name"]}"\nplugin = "segment"\n'
                                f'write_key = "{s["write_key"]}"\n' for s in sources))
    monkeypatch.setenv("HOOKYARD_WRITE_KEY", KEY)
    code, _, err = send_test("--config", str(config), "--source", "hook", "--user-id", "src-user")
    assert code == 0, err
    stored = srv.api("/api/events", params={"user_id": "src-user"}).json()["items"]
    assert {e["source"] for e in stored} == {"hook"}


def test_defaults_come_from_the_data_dir(hookyard_server: Start, tmp_path: Path,
                                         monkeypatch: object) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "write_key").write_text(KEY + "\n")
    (data / "admin_token").write_text(ADMIN + "\n")
    srv = hookyard_server({"server": {"admin_token": ADMIN}, "sources": [
        {"name": "default", "plugin": "segment", "write_key": KEY}]})
    code, out, err = send_test("--data-dir", str(data), "--url", srv.url, "--wait", "1")
    assert code == 0, err
    assert out.count("no deliveries: no destination is connected") == 2


def test_without_admin_token_only_sending_is_reported(server: HookyardServer) -> None:
    code, out, _ = send_test("--url", server.url, "--write-key", KEY,
                             "--data-dir", "/nonexistent")
    assert code == 0
    assert "stored (HTTP 200)" in out and "pass --admin-token" in out


def test_keys_come_from_the_environment(server: HookyardServer,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys on a command line are visible to every user (ps): the variables keep them out."""
    monkeypatch.setenv("HOOKYARD_WRITE_KEY", KEY)
    monkeypatch.setenv("HOOKYARD_ADMIN_TOKEN", ADMIN)
    code, out, err = send_test("--url", server.url, "--data-dir", "/nonexistent")
    assert "stored (HTTP 200)" in out and "-> profiles" in out, err


def test_errors_are_one_line(server: HookyardServer, tmp_path: Path) -> None:
    with FakeServer() as gone:
        dead_url = gone.url
    cases = {
        ("--url", dead_url, "--write-key", KEY): f"Error: cannot reach hookyard at {dead_url}",
        ("--url", server.url, "--write-key", "wrong-write-key"):
            f"Error: identify refused by {server.url}: HTTP 401 invalid write key",
        ("--url", server.url, "--write-key", KEY, "--admin-token", "wrong-token"):
            f"Error: the admin token from --admin-token was refused by {server.url}",
        ("--data-dir", str(tmp_path / "empty")): "Error: no write key: set HOOKYARD_WRITE_KEY",
        ("--config", str(tmp_path / "missing.toml")): "Error: config file",
        ("--url", "ftp://x", "--write-key", KEY): "Error: --url must start with http://",
        ("--url", server.url, "--write-key", "bad\udcff"): "Error: the write key must be printable",
    }
    # a config whose only source is another plugin's (source-author audit: it said "no write
    # key ... pass --config" to a command given --config)
    other = tmp_path / "other.toml"
    other.write_text('[[sources]]\nname = "acme-in"\nplugin = "pushwoosh"\nwrite_key = "k-12345678"\n')
    cases[("--config", str(other))] = (f"Error: {other} has no source of plugin 'segment', which"
                                       " send-test sends its Segment events to (sources: acme-in")
    cases[("--config", str(other), "--source", "acme-in")] = (
        "Error: source 'acme-in' uses the plugin 'pushwoosh': send-test sends Segment events")
    for args, expected in cases.items():
        code, _, err = send_test(*args)
        assert code == 1, args
        assert err.startswith(expected), (args, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "empty").exists()


def test_a_refused_token_from_the_environment_is_named(server: HookyardServer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A HOOKYARD_ADMIN_TOKEN left in the shell wins over the data dir's: say it was that one."""
    monkeypatch.setenv("HOOKYARD_ADMIN_TOKEN", "left-over-token")
    code, _, err = send_test("--url", server.url, "--write-key", KEY)
    assert code == 1
    assert "the admin token from $HOOKYARD_ADMIN_TOKEN was refused" in err
    assert "unset HOOKYARD_ADMIN_TOKEN" in err


def test_the_dlq_hint_carries_the_config(server: HookyardServer, tmp_path: Path) -> None:
    """The command the error suggests works as typed: with the --data-dir given."""
    code, _, err = send_test("--url", server.url, "--write-key", KEY, "--admin-token", ADMIN,
                             "--data-dir", str(tmp_path / "x y"))
    assert code == 1
    assert err.strip().endswith(f"`hookyard dlq list --data-dir '{tmp_path / 'x y'}'`)")


def test_a_filtered_delivery_lines_up_with_the_others() -> None:
    """The column after the state starts at the same place on every line (an audit's nit)."""
    from hookyard.send_test import describe

    filtered = describe({"destination": "profiles", "state": "filtered", "last_error": "anonymous"})
    done = describe({"destination": "profiles", "state": "done", "attempts_log": [{}]})
    assert filtered.index("skipped") == done.index("1 attempt")


@pytest.mark.parametrize("wait", ["-1", "nan", "inf"])
def test_a_wait_that_is_not_a_number_of_seconds_is_refused(wait: str) -> None:
    result = CliRunner().invoke(main, ["send-test", "--wait", wait])
    assert result.exit_code == 2
    assert wait in result.stderr and "--wait" in result.stderr
