"""The novu connector plugin (work in progress)."""

from hookyard import hookimpl  # noqa: F401
