"""The serial console shared between the terminal and web pages.

`SharedConsole` wraps the console a VM was given (the user's terminal or
pipes): the guest's output still goes there, and also to every page
listening; what a page types is queued next to the terminal's input. The
machine sees one console (`take`, `has_input`, `write`, `event`...).

The last `HISTORY` bytes of output are kept, so a page opened late shows
the recent screen. Listeners are called on the VM's thread; they only hand
the bytes to their own thread (asyncio `call_soon_threadsafe`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

HISTORY = 64 * 1024
MAX_PENDING_INPUT = 1 << 20  # typed but not yet read by the guest


class SharedConsole:
    def __init__(self, inner: Any):
        self.inner = inner
        self.event: threading.Event = getattr(inner, "event", None) or threading.Event()
        self._lock = threading.Lock()
        self._input = bytearray()
        self._history = bytearray()
        self._listeners: list[Callable[[bytes], None]] = []

    # --- what the machine uses -----------------------------------------------------

    @property
    def quit_requested(self) -> bool:
        return bool(self.inner.quit_requested)

    @property
    def interactive(self) -> bool:
        return bool(self.inner.interactive)

    def take(self) -> bytes:
        data = self.inner.take()
        with self._lock:
            if self._input:
                data += bytes(self._input)
                self._input.clear()
        return data

    def has_input(self) -> bool:
        if self.inner.has_input():
            return True
        with self._lock:
            return bool(self._input)

    def write(self, data: bytes) -> None:
        self.inner.write(data)
        with self._lock:
            self._history += data
            if len(self._history) > HISTORY:
                del self._history[: len(self._history) - HISTORY]
            listeners = list(self._listeners)
        for listener in listeners:
            listener(data)

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    def __enter__(self) -> SharedConsole:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what pages use -----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Input typed in a page (thread-safe). Beyond MAX_PENDING_INPUT unread bytes, input is dropped."""
        with self._lock:
            room = MAX_PENDING_INPUT - len(self._input)
            self._input += data[: max(0, room)]
        self.event.set()

    def subscribe(self, listener: Callable[[bytes], None]) -> bytes:
        """Call `listener(output)` for every later output; returns the recent history."""
        with self._lock:
            self._listeners.append(listener)
            return bytes(self._history)

    def unsubscribe(self, listener: Callable[[bytes], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)
