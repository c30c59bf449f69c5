"""What a network backend offers the virtio-net device.

A backend is the host side of a guest's network card: it takes the
Ethernet frames the guest sends and produces the frames the guest receives.
It may use threads and sockets of its own, but it meets the VM only on the
VM's run-loop thread (send, receive), except for `wake`, which tells an idle
VM that there is something to receive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class NetBackend(Protocol):
    def attach(self, wake: Callable[[], None]) -> None:
        """Start working (threads, sockets). Call `wake()` (from any thread) whenever
        frames for the guest become available, so an idle VM wakes up."""

    def send(self, frame: bytes) -> None:
        """An Ethernet frame from the guest (no FCS). Called on the VM's run-loop
        thread: must not block."""

    def receive(self) -> bytes | None:
        """The next Ethernet frame for the guest, or None. Non-blocking; run-loop thread."""

    def close(self) -> None:
        """Stop; release host resources. Idempotent."""


class DisconnectedNet:
    """The other end of a network card with no cable: frames go nowhere."""

    def attach(self, wake: Callable[[], None]) -> None:
        pass

    def send(self, frame: bytes) -> None:
        pass

    def receive(self) -> bytes | None:
        return None

    def close(self) -> None:
        pass
