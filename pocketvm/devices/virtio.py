"""What a virtio device (block, entropy, ...) offers its transport.

A device only knows its queues and its configuration space; the transport
(`virtio_mmio.VirtioMmio`) owns the registers, feature negotiation, status
and the interrupt line. The transport calls the hooks below; the device
calls back through `self.transport` (`queues`, `ram`, `notify_used(q)`,
`config_changed()`), which is set by `attach()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pocketvm.devices.guestlog import guest_error

if TYPE_CHECKING:
    from pocketvm.devices.virtio_mmio import VirtioMmio
    from pocketvm.devices.virtqueue import Chain

log = logging.getLogger(__name__)

# device status bits (VIRTIO 1.2 section 2.1)
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_DEVICE_NEEDS_RESET = 0x40
STATUS_FAILED = 0x80

# transport feature bits (section 6)
F_RING_INDIRECT_DESC = 1 << 28
F_RING_EVENT_IDX = 1 << 29
F_VERSION_1 = 1 << 32

# device ids (section 5)
ID_NONE = 0
ID_NET = 1
ID_BLOCK = 2
ID_CONSOLE = 3
ID_ENTROPY = 4


class VirtioDevice:
    """Base class of the device half of a virtio device; override what applies."""

    device_id = ID_NONE
    num_queues = 1
    queue_num_max = 256

    def __init__(self) -> None:
        self.transport: VirtioMmio | None = None

    def attach(self, transport: VirtioMmio) -> None:
        self.transport = transport

    def device_features(self) -> int:
        """Device-specific feature bits (the transport adds the generic ones)."""
        return 0

    def config_bytes(self) -> bytes:
        """Current contents of the device configuration space (little endian)."""
        return b""

    def config_write(self, offset: int, data: bytes) -> None:
        guest_error(log, "virtio device %d: ignored config write at %#x", self.device_id, offset)

    def queue_notify(self, q: int) -> None:
        """The driver made buffers available in queue `q` (already checked to exist and be ready)."""

    def serve_queue(self, q: int, handle: Callable[[Chain], int]) -> None:
        """Answer the requests available in queue `q` (at most a queue's worth,
        see `VirtQueue.pop_available`), each with `handle`, which returns the
        byte count for the used ring; then interrupt the driver once."""
        assert self.transport is not None
        queue = self.transport.queues[q]
        done = False
        for chain in queue.pop_available():
            queue.push(chain.head, handle(chain))
            done = True
        if done:
            self.transport.notify_used(q)

    def reset(self) -> None:
        """The driver reset the device; forget any in-flight state."""

    def save(self) -> dict[str, Any]:
        return {}

    def load(self, state: dict[str, Any]) -> None:
        pass
