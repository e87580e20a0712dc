"""Suite-wide settings and fixtures.

Hypothesis (the property tests and schemathesis' fuzzing) runs derandomized by default so a CI
run is reproducible: the same examples every time. Explore new inputs with
``python -m pytest --hypothesis-profile=explore`` (random, more examples).
"""

import importlib.util
import shutil
import subprocess
import sys
import tempfile
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
# low priority, and tests/test_binary.py waits for it instead of building on its own.
BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "build-binary"


class BinaryBuild:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hookyard-binary-"))
        self.log = open(self.dir / "build.log", "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["nice", "-n", "15", sys.executable, str(BUILD_SCRIPT), "--dist", str(self.dir / "dist")],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float = 900) -> tuple[int, str, Path]:
        """(exit status, the build's output, the binary)."""
        code = self.proc.wait(timeout=timeout)
        self.log.seek(0)
        return code, self.log.read().decode(errors="replace"), self.dir / "dist" / "hookyard"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.hookimpl(trylast=True)  # after -k / -m took out what does not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any(item.get_closest_marker("binary") for item in items) and \
            importlib.util.find_spec("PyInstaller") is not None:
        config.stash[BINARY_BUILD] = BinaryBuild()


def pytest_unconfigure(config: pytest.Config) -> None:
    build = config.stash.get(BINARY_BUILD, None)
    if build is not None:
        build.stop()


BINARY_BUILD = pytest.StashKey[BinaryBuild]()


@pytest.fixture()
def binary_build(request: pytest.FixtureRequest) -> BinaryBuild | None:
    """The build started at collection, or None (PyInstaller missing: the test skips)."""
    return request.config.stash.get(BINARY_BUILD, None)
