"""What every memory-mapped device offers the board.

A device owns a window of guest physical address space. The board routes a
guest load or store that falls in the window to `read`/`write` with the offset
inside the window; `size` is 1, 2, 4 or 8 bytes. A device never raises for a
guest access: unknown registers read as 0 and ignore writes (a guest is
hostile and must not be able to crash the monitor).

Devices raise interrupts through an `IrqLine` handed to them by the board.
Device state that a snapshot must keep is returned by `save()` as plain data
(ints, bytes, lists, dicts) and put back by `load()`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol


class MmioDevice(Protocol):
    name: str

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...

    def save(self) -> dict[str, Any]: ...

    def load(self, state: dict[str, Any]) -> None: ...


class IrqLine:
    """One level-triggered interrupt wire from a device to the interrupt controller."""

    def __init__(self, sink: Callable[[int, bool], None] | None = None, source: int = 0):
        self.sink = sink
        self.source = source
        self.level = False

    def set(self, level: bool) -> None:
        self.level = bool(level)
        if self.sink is not None:
            self.sink(self.source, self.level)

    def raise_(self) -> None:
        self.set(True)

    def lower(self) -> None:
        self.set(False)
