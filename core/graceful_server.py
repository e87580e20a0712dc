"""uvicorn's server, stopping gracefully on SIGHUP too.

uvicorn takes SIGINT and SIGTERM; SIGHUP (the terminal closed, an SSH session dropped) ended
``hookyard serve`` at once, with requests cut off and deliveries left leased until their
lease expired. Imported by ``serve`` only (uvicorn is not needed by the other commands).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Generator

import uvicorn

from .serving import end_like_the_signal


class Server(uvicorn.Server):
    """uvicorn's server, stopping gracefully on SIGHUP too (uvicorn takes SIGINT and SIGTERM):
    afterwards the process ends by SIGHUP, as it would have."""

    @property
    def captured(self) -> list[int]:
        """The stop signals caught (uvicorn re-raises them after the graceful stop; one whose
        handler ignores it, as a script's ``cmd &`` leaves SIGINT, was ignored again)."""
        return list(self._captured_signals)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGHUP) is signal.SIG_IGN):  # nohup: left ignored
            with super().capture_signals():
                yield
            return
        previous = signal.signal(signal.SIGHUP, self.handle_exit)
        try:
            with super().capture_signals():
                yield
        finally:
            signal.signal(signal.SIGHUP, previous)
        if signal.SIGHUP in self._captured_signals:
            end_like_the_signal(signal.SIGHUP)
