"""The host side of the guest's serial console.

Input is read by a background thread into an unbounded buffer, so bytes piped
into `pocket run` are never dropped however early they arrive; the VM hands
them to the UART as the guest reads them. In a terminal the console is raw
and `Ctrl-A x` quits (as in QEMU); `Ctrl-A Ctrl-A` sends a literal Ctrl-A.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import BinaryIO, Callable

CTRL_A = 0x01


class HostConsole:
    def __init__(
        self,
        stdin: BinaryIO | None = None,
        stdout: BinaryIO | None = None,
        interactive: bool | None = None,
    ):
        self._in = stdin if stdin is not None else sys.stdin.buffer
        self._out = stdout if stdout is not None else sys.stdout.buffer
        try:
            fd = self._in.fileno()
        except (OSError, ValueError, AttributeError):
            fd = None
        self._fd = fd
        self.interactive = interactive if interactive is not None else (fd is not None and os.isatty(fd))
        self._lock = threading.Lock()
        self._pending = bytearray()
        self.event = threading.Event()  # set whenever input arrives or quit is requested
        self.quit_requested = False
        self.eof = False
        self._saved_tty = None
        self._escape = False
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        if self.interactive and self._fd is not None:
            import termios
            import tty

            self._saved_tty = termios.tcgetattr(self._fd)
            tty.setraw(self._fd)
        if self._fd is not None:
            self._thread = threading.Thread(target=self._reader, name="console-input", daemon=True)
            self._thread.start()
        else:
            self.eof = True

    def stop(self) -> None:
        if self._saved_tty is not None and self._fd is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None

    def __enter__(self) -> "HostConsole":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- input -----------------------------------------------------------------
    def _reader(self) -> None:
        assert self._fd is not None
        while True:
            try:
                data = os.read(self._fd, 4096)
            except OSError:
                data = b""
            if not data:
                self.eof = True
                self.event.set()
                return
            if self.interactive:
                data = self._filter_escape(data)
            with self._lock:
                self._pending += data
            self.event.set()
            if self.quit_requested:
                return

    def _filter_escape(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            if self._escape:
                self._escape = False
                if b in (ord("x"), ord("X")):
                    self.quit_requested = True
                    break
                if b == CTRL_A:
                    out.append(CTRL_A)
                continue
            if b == CTRL_A:
                self._escape = True
                continue
            out.append(b)
        return bytes(out)

    def take(self) -> bytes:
        """All input received so far and not yet taken."""
        with self._lock:
            data = bytes(self._pending)
            self._pending.clear()
            self.event.clear()
        return data

    def has_input(self) -> bool:
        with self._lock:
            return bool(self._pending)

    # --- output ----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        try:
            self._out.write(data)
            self._out.flush()
        except (BrokenPipeError, ValueError):
            pass


class CapturedConsole:
    """A console for tests and the Python API: scripted input, captured output."""

    def __init__(self, input_data: bytes = b"", echo: Callable[[bytes], None] | None = None):
        self.interactive = False
        self.quit_requested = False
        self.eof = True
        self.event = threading.Event()
        self._pending = bytearray(input_data)
        self.output = bytearray()
        self._echo = echo
        self._lock = threading.Lock()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def send(self, data: bytes) -> None:
        with self._lock:
            self._pending += data
        self.event.set()

    def take(self) -> bytes:
        with self._lock:
            data = bytes(self._pending)
            self._pending.clear()
            self.event.clear()
        return data

    def has_input(self) -> bool:
        return bool(self._pending)

    def write(self, data: bytes) -> None:
        self.output += data
        if self._echo is not None:
            self._echo(data)
