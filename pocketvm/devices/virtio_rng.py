"""virtio-rng (VIRTIO 1.2 section 5.4): entropy from the host's os.urandom.

Each device-writable buffer the driver posts is filled with random bytes.
A single request is served at most MAX_REQUEST bytes (the specification
lets the device return fewer than asked), so a guest posting gigabytes of
buffers cannot make the host generate them all in one go.
"""

from __future__ import annotations

import logging
import os

from pocketvm.devices import virtio as v
from pocketvm.devices.guestlog import guest_error
from pocketvm.devices.virtqueue import Chain

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024


class VirtioRng(v.VirtioDevice):
    device_id = v.ID_ENTROPY
    num_queues = 1
    queue_num_max = 64

    def queue_notify(self, q: int) -> None:
        self.serve_queue(q, self._fill)

    def _fill(self, chain: Chain) -> int:
        assert self.transport is not None
        if chain.error:
            return 0  # the chain was logged when popped; hand it back empty
        if chain.readable:
            guest_error(log, "virtio-rng: device-readable buffers ignored", level=logging.DEBUG)
        n = min(chain.writable_len, MAX_REQUEST)
        return chain.write(self.transport.ram, 0, os.urandom(n))
