"""hookyard: a self-hosted, plugin-based event router for Segment-format customer data."""

from .hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
