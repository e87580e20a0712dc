"""Suite-wide settings.

Hypothesis (the property tests and schemathesis' fuzzing) runs derandomized by default so a CI
run is reproducible: the same examples every time. Explore new inputs with
``python -m pytest --hypothesis-profile=explore`` (random, more examples).
"""

from hypothesis import settings

settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", max_examples=500)
settings.load_profile("ci")
