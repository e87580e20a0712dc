"""What an operator's mistakes with the data dir and the config get: one clear ``Error:`` line
and exit 1, never a traceback, and never a server with its keys switched off (an outside audit
of the command line found each of these)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from hookyard.cli import main
from hookyard.config import load_config, parse_config
from hookyard.errors import ConfigError
from hookyard.secret_files import read_or_create_secret
from hookyard.serving import lock_data_dir

ONE_SOURCE = """\
[[sources]]
name = "web"
plugin = "segment"
write_key = "wk_12345678"
"""


def _serve(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["serve", "--port", "0", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.mark.parametrize("name", ["admin_token", "write_key"])
def test_an_empty_secret_file_stops_start_up(tmp_path: Path, name: str) -> None:
    """Taken as "", it accepted an empty admin token (the whole read API open) or an empty
    write key; a crash right after the first start could leave such a file."""
    data = tmp_path / "data"
    data.mkdir()
    (data / name).write_text("\n")
    code, output = _serve("--data-dir", str(data))
    assert code == 1
    assert f"{data / name} is empty" in output


@pytest.mark.parametrize("name", ["admin_token", "write_key"])
@pytest.mark.parametrize("value", ["abc", "has space in it", "wk:with-colon", "ünïcode-key"])
def test_a_weak_or_unusable_secret_file_stops_start_up(tmp_path: Path, name: str, value: str) -> None:
    """Found by an outside audit: ``abc`` in the file was accepted as the admin token or the
    write key, where the same in the config is refused (at least 8 characters)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / name).write_text(value + "\n")
    code, output = _serve("--data-dir", str(data))
    assert code == 1
    assert f"{data / name} must hold a secret of at least 8 characters" in output


def test_a_new_secret_is_written_whole_and_kept(tmp_path: Path) -> None:
    value, created = read_or_create_secret(tmp_path / "d" / "admin_token", "adm")
    assert created and value.startswith("adm_")
    assert (tmp_path / "d" / "admin_token").stat().st_mode & 0o777 == 0o600
    assert read_or_create_secret(tmp_path / "d" / "admin_token", "adm") == (value, False)
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["admin_token"]  # no temp file left


def test_a_data_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    code, output = _serve("--data-dir", str(afile))
    assert code == 1 and output == f"Error: the data dir {afile} is not a directory\n"


def test_a_database_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "db.sqlite").mkdir()  # SQLite: "unable to open database file"
    config = tmp_path / "hookyard.toml"
    config.write_text(f'[server]\nadmin_token = "admintoken123"\n[storage]\n'
                      f'url = "sqlite:///{tmp_path / "db.sqlite"}"\n' + ONE_SOURCE)
    code, output = _serve("--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert code == 1
    assert "cannot open the database (SQLite" in output


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[server]\nhost = ""\n', "server.host must not be empty"),
        ('[storage]\nschema = " "\n', "storage.schema must not be empty"),
        ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ],
    ids=["empty-host", "empty-schema", "deep-toml"],
)
def test_config_mistakes_are_named(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "hookyard.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_byte_order_mark_and_an_upper_case_log_level_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "hookyard.toml"
    path.write_text("\ufeff[server]\nlog_level = \"DEBUG\"\n" + ONE_SOURCE, encoding="utf-8")
    assert load_config(path).server.log_level == "debug"


def test_new_plugin_into_a_file_is_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    result = CliRunner().invoke(main, ["new-plugin", "zed", "--dir", str(afile)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "cannot write the plugin under" in result.output


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_ctrl_c_while_starting_exits_130(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not click's "Aborted!" and 1: the status a shell or a supervisor expects for SIGINT,
    as after start-up (the config read, the database opened or upgraded, can take a while)."""
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("hookyard.cli.load_cli_config", interrupted)
    result = CliRunner().invoke(main, [command, "--config", "not-read.toml"])
    assert result.exit_code == 130
    assert "Aborted" not in result.output


def test_one_serve_and_one_worker_per_data_dir(tmp_path: Path) -> None:
    """A second serve on a data dir stops with the first one's pid (the kernel drops the lock
    when a process ends, kill -9 included); serve --no-workers and a worker may share one."""
    first = lock_data_dir(tmp_path, "serve")
    assert first is not None
    with pytest.raises(ConfigError, match=rf"another `hookyard serve` \(pid {os.getpid()}\)"):
        lock_data_dir(tmp_path, "serve")
    worker = lock_data_dir(tmp_path, "worker")
    assert worker is not None
    first.close()
    again = lock_data_dir(tmp_path, "serve")
    assert again is not None
    again.close()
    worker.close()


def test_one_delivering_process_per_sqlite_database(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` with its workers and ``worker`` both deliver: the second one to start on a
    data dir stops (each would hand out a user's deliveries, out of order); ``serve
    --no-workers`` beside a worker is the documented split and starts."""
    from hookyard.config import default_config
    from hookyard.runtime import Runtime

    rt = Runtime.build(default_config(tmp_path))
    rt.open()
    rt.close()
    delivering = lock_data_dir(tmp_path, "delivery")  # as a running worker holds it
    args = ["--data-dir", str(tmp_path)]
    monkeypatch.setattr("uvicorn.Server.run", lambda self, sockets=None: None)
    result = CliRunner().invoke(main, ["serve", "--port", "0", "--no-workers", *args])
    assert result.exit_code == 0, result.output
    assert "delivery:    not in this process (--no-workers): run `hookyard worker`" in result.output
    for command in (["serve", "--port", "0"], ["worker"]):
        result = CliRunner().invoke(main, [*command, *args])
        assert result.exit_code == 1, result.output
        assert f"another hookyard process (pid {os.getpid()}: `serve` with its workers, or" \
               " `worker`) delivers from the SQLite database" in " ".join(result.output.split())
        assert "hookyard serve --no-workers" in result.output
    assert delivering is not None
    delivering.close()


def test_one_delivering_process_per_database_shared_by_two_data_dirs(tmp_path: Path) -> None:
    """Two data dirs with one database (``storage.url``) each took their own delivery lock,
    and both delivered (delivery adversity audit): the lock is beside the database."""
    from hookyard.config import StorageSettings
    from hookyard.serving import lock_delivery

    storage = StorageSettings(url=f"sqlite:///{tmp_path / 'shared' / 'events.db'}")
    (tmp_path / "shared").mkdir()
    (tmp_path / "a").mkdir()
    first = lock_delivery(tmp_path / "a", storage)
    assert (tmp_path / "shared" / "events.db.delivery.lock").exists()
    with pytest.raises(ConfigError, match="delivers from the SQLite database .*events.db"):
        lock_delivery(tmp_path / "b", storage)
    for lock in first:
        assert lock is not None
        lock.close()
    # a second data dir pointed at the first one's database (the upgrade re-check): the lock
    # beside that database refuses it too
    home = tmp_path / "home"
    home.mkdir()
    here = lock_delivery(home, StorageSettings())
    assert (home / "delivery.lock").exists() and (home / "hookyard.db.delivery.lock").exists()
    other = StorageSettings(url=f"sqlite:///{home / 'hookyard.db'}")
    with pytest.raises(ConfigError, match="delivers from the SQLite database"):
        lock_delivery(tmp_path / "b", other)
    for lock in here:
        assert lock is not None
        lock.close()


def test_check_config_checks_the_data_dir_and_warns_of_no_sources(tmp_path: Path) -> None:
    """check-config does serve's start-up checks: a data dir that is a file is reported before
    any downtime, and a config with no sources (an empty file) gets a warning."""
    config = tmp_path / "hookyard.toml"
    config.write_text(ONE_SOURCE)
    afile = tmp_path / "afile"
    afile.write_text("")
    for where, message in ((afile, "is not a directory"), (afile / "sub", "is a file")):
        result = CliRunner().invoke(main, ["check-config", "-c", str(config), "--data-dir", str(where)])
        assert result.exit_code == 1 and message in result.output
        # serve says it the same way, with or without a config (it said "cannot read or
        # create .../write_key: File exists"; newcomer audit)
        for config_args in (["-c", str(config)], []):
            code, output = _serve(*config_args, "--data-dir", str(where))
            assert code == 1 and message in output, output
            worker = CliRunner().invoke(main, ["worker", *config_args, "--data-dir", str(where)])
            assert worker.exit_code == 1 and message in worker.output, worker.output
    config.write_text("")
    result = CliRunner().invoke(main, ["check-config", "-c", str(config),
                                       "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0 and "no [[sources]]" in result.output


def test_a_write_key_from_an_empty_variable_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HY_EMPTY_KEY", "")
    data = {"sources": [{"name": "web", "plugin": "segment", "write_key": "env:HY_EMPTY_KEY"}]}
    with pytest.raises(ConfigError, match="source 'web' write_key is 'env:HY_EMPTY_KEY' but"
                                          " environment variable HY_EMPTY_KEY is empty"):
        parse_config(data)


@pytest.mark.parametrize(("url", "schema", "expected"), [
    ("postgresql://u:pw@db:54x/hy", "public", "port '54x' is not a number from 1 to 65535"),
    ("postgresql://u:pw@db:99999/hy", "public", "port '99999' is not a number"),
    ("postgresql://u:pw@db/hy?sslmode=requre", "public", "sslmode 'requre' is not one of"),
    ("postgresql://u:pw@db/hy?sslmod=require", "public", 'invalid URI query parameter: "sslmod"'),
    ("postgresql://u:pw@db/hy", "s" * 64, "storage.schema is 64 bytes long"),
])
def test_check_config_finds_a_postgresql_url_that_cannot_work(
    tmp_path: Path, url: str, schema: str, expected: str
) -> None:
    """These passed check-config, which does not connect; serve then failed at start, or (a
    long schema name) PostgreSQL cut the name short."""
    config = tmp_path / "hookyard.toml"
    config.write_text(f'[storage]\nurl = "{url}"\nschema = "{schema}"\n\n{ONE_SOURCE}')
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 1 and expected in result.output, result.output


@pytest.mark.parametrize("url", ["postgresql://hy:s3cr%zzet@db/hy",
                                 "postgresql://hy@db/hy?password=s3cr%zzet"])
def test_a_bad_password_token_is_not_echoed(url: str) -> None:
    with pytest.raises(ConfigError, match="percent-encoded") as info:
        parse_config({"storage": {"url": url}})
    assert "s3cr" not in str(info.value)


def test_a_good_postgresql_url_passes() -> None:
    parse_config({"storage": {"url": "postgresql://hy:pw@h1:5432,h2:5433/hy?sslmode=verify-full",
                              "schema": "s" * 63}})


def test_a_worker_without_a_config_needs_serves_data(tmp_path: Path) -> None:
    """It created a new default install (a data dir and a write key nobody sends with) where
    --data-dir was mistyped or the directory was the wrong one, then waited for events."""
    data = tmp_path / "hookyard-dta"
    result = CliRunner().invoke(main, ["worker", "--data-dir", str(data)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"no hookyard database at {data / 'hookyard.db'}" in result.output
    assert not data.exists()


def test_a_secret_file_others_may_write_stops_start_up(tmp_path: Path) -> None:
    """Found by an outside audit: another user pre-made the data dir 0777 with an admin_token
    of their own, and it was taken without a word."""
    data = tmp_path / "data"
    data.mkdir()
    secret = data / "admin_token"
    secret.write_text("planted-token-123\n")
    secret.chmod(0o666)
    code, output = _serve("--data-dir", str(data))
    assert code == 1 and f"{secret} may be written by other users (mode 666)" in output
    if os.geteuid() == 0:  # only root can give a file away
        secret.chmod(0o600)
        os.chown(secret, 65534, -1)
        code, output = _serve("--data-dir", str(data))
        assert code == 1 and f"{secret} belongs to another user (uid 65534)" in output


def test_a_lock_file_is_never_followed_through_a_symlink(tmp_path: Path) -> None:
    """Found by an outside audit: a symlink planted as serve.lock had its target truncated
    and overwritten with the pid."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "serve.lock").symlink_to(victim)
    with pytest.raises(ConfigError, match="serve.lock is a symbolic link"):
        lock_data_dir(tmp_path, "serve")
    assert victim.read_text() == "precious\n"


def test_a_data_dir_every_user_may_write_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from hookyard.serving import warn_if_others_may_write

    tmp_path.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="hookyard"):
        warn_if_others_may_write(tmp_path)
    assert f"every user may write in the data dir {tmp_path} (mode 777)" in caplog.text
