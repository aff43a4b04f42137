"""SIGTERM handled like Ctrl-C (SIGINT) while a CLI command runs.

``timeout``, ``kill``, schedulers and containers stop a process with SIGTERM. Inside
``terminate_as_interrupt()`` it raises ``Terminated`` (a ``KeyboardInterrupt``), so every
``finally``/``except BaseException`` that removes temporary folders on Ctrl-C also runs on
SIGTERM; the CLI then prints one line and exits with 143 (128 + 15) instead of 130.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def _raise(signum, frame):
    raise Terminated()


@contextmanager
def terminate_as_interrupt():
    """While active (main thread only), SIGTERM raises ``Terminated``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal number: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


__all__ = ["Terminated", "exit_code", "terminate_as_interrupt"]
