"""Ctrl-C in a long job: one line that says where it stopped and how to continue, and exit code 130.

A job wraps its work in ``interrupts_say(message)``; the ``facerig`` command prints ``facerig CMD: message``
for the ``Interrupted`` that comes out (``interrupted`` alone for a Ctrl-C elsewhere) instead of a
traceback. What the job wrote is as it was: its files are written atomically, so a rerun resumes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a job; ``str()`` says where it stopped and how to continue (the command prints it)."""


@contextlib.contextmanager
def interrupts_say(message: str | Callable[[], str]) -> Iterator[None]:
    """Turn a Ctrl-C inside the block into ``Interrupted(message)`` (a callable is asked at that moment)."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(message() if callable(message) else message) from None
