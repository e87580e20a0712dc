"""Suite-wide settings and fixtures.

Hypothesis (the property tests and schemathesis' fuzzing) runs derandomized by default so a CI
run is reproducible: the same examples every time. Explore new inputs with
``python -m pytest --hypothesis-profile=explore`` (random, more examples).
"""

import time
from collections.abc import Iterator

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
