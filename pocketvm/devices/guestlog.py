"""Rate-limited logging of guest misbehaviour.

Every device logs bad guest input (a malformed descriptor, an unknown
register), but a hostile guest can repeat the same mistake millions of times
a second; logging each one would let it fill the host's disk. After a burst,
only every Nth report of the same logger gets through.
"""

from __future__ import annotations

import logging

_BURST = 32  # reports logged in full before throttling starts
_EVERY = 1000  # then one in this many

_counts: dict[str, int] = {}


def guest_error(log: logging.Logger, msg: str, *args: object, level: int = logging.WARNING) -> None:
    """Log `msg % args` unless this logger has already reported a lot."""
    n = _counts.get(log.name, 0) + 1
    _counts[log.name] = n
    if n <= _BURST:
        log.log(level, msg, *args)
    elif n % _EVERY == 0:
        log.log(level, msg + " (%d reports so far, most suppressed)", *args, n)
