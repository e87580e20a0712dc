"""Suite-wide settings and fixtures.

Hypothesis (the property tests and schemathesis' fuzzing) runs derandomized by default so a CI
run is reproducible: the same examples every time. Explore new inputs with
``python -m pytest --hypothesis-profile=explore`` (random, more examples).
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", max_examples=500)
settings.load_profile("ci")


@pytest.fixture()
def far_time_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The server runs at UTC-10: a naive time read as local would be 10 hours off."""
    monkeypatch.setenv("TZ", "Pacific/Honolulu")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# -- the single-file binary, built while the other tests run ------------------------------------
# A cold PyInstaller build takes ~40 s of CPU, and the suite's tests leave a core idle much of
# the time (they wait for servers), so it starts as soon as the binary test is collected, at a
# low priority, and tests/test_binary.py waits for it instead of building on its own. Under
# pytest-xdist the controller starts it (once, not once per worker) and the worker that runs
# the test waits for the build's status file in the directory named by BINARY_DIR_ENV.
BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "build-binary"
BINARY_DIR_ENV = "HOOKYARD_TEST_BINARY_DIR"
BINARY_TEST_FILE = "tests/test_binary.py"


class BinaryBuild:
    """A build into ``directory``: ``build.log``, ``dist/hookyard``, and ``status`` (its exit
    code) once done. ``proc`` is set in the process that started it, which stops it."""

    def __init__(self, directory: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.dir = directory
        self.proc = proc

    @classmethod
    def start(cls, directory: Path) -> "BinaryBuild":
        # in pytest's process group, as any child: a `timeout` or Ctrl-C that ends the run
        # ends the build too (a session of its own outlived a killed pytest)
        log = open(directory / "build.log", "wb")  # noqa: SIM115 - closed when it ends
        proc = subprocess.Popen(
            ["nice", "-n", "15", sys.executable, str(BUILD_SCRIPT), "--dist", str(directory / "dist")],
            stdout=log, stderr=subprocess.STDOUT,
        )

        def note_status() -> None:  # for the worker that waits on it, when under xdist
            code = proc.wait()
            log.close()
            try:
                (directory / "status.tmp").write_text(str(code))
                os.replace(directory / "status.tmp", directory / "status")
            except OSError:  # stop() removed the directory: nobody waits any more
                pass

        threading.Thread(target=note_status, name="binary-build", daemon=True).start()
        return cls(directory, proc)

    def wait(self, timeout: float = 900) -> tuple[int, str, Path]:
        """(exit status, the build's output, the binary)."""
        status = self.dir / "status"
        deadline = time.monotonic() + timeout
        while not status.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the binary build in {self.dir} did not end in {timeout} s")
            time.sleep(0.5)
        log = (self.dir / "build.log").read_text(errors="replace")
        return int(status.read_text()), log, self.dir / "dist" / "hookyard"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _can_build() -> bool:
    return importlib.util.find_spec("PyInstaller") is not None


def _xdist_controller(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    if _xdist_controller(config) and _can_build():  # before the workers start: they inherit it
        os.environ[BINARY_DIR_ENV] = tempfile.mkdtemp(prefix="hookyard-binary-")


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook, in its controller
def pytest_xdist_node_collection_finished(node: object, ids: list[str]) -> None:
    config = node.config  # type: ignore[attr-defined]
    if BINARY_BUILD not in config.stash and any(i.startswith(BINARY_TEST_FILE) for i in ids) \
            and os.environ.get(BINARY_DIR_ENV):
        config.stash[BINARY_BUILD] = BinaryBuild.start(Path(os.environ[BINARY_DIR_ENV]))


@pytest.hookimpl(trylast=True)  # after -k / -m took out what does not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: the controller builds
        return
    if any(item.get_closest_marker("binary") for item in items) and _can_build():
        config.stash[BINARY_BUILD] = BinaryBuild.start(
            Path(tempfile.mkdtemp(prefix="hookyard-binary-")))


def pytest_unconfigure(config: pytest.Config) -> None:
    build = config.stash.get(BINARY_BUILD, None)
    if build is not None:
        build.stop()
    if _xdist_controller(config) and os.environ.get(BINARY_DIR_ENV):  # made, maybe never
        shutil.rmtree(os.environ[BINARY_DIR_ENV], ignore_errors=True)  # built (--collect-only)


BINARY_BUILD = pytest.StashKey[BinaryBuild]()


@pytest.fixture()
def binary_build(request: pytest.FixtureRequest) -> BinaryBuild | None:
    """The build started at collection, or None (PyInstaller missing: the test skips)."""
    if hasattr(request.config, "workerinput"):
        directory = os.environ.get(BINARY_DIR_ENV)
        return BinaryBuild(Path(directory)) if directory else None
    return request.config.stash.get(BINARY_BUILD, None)
