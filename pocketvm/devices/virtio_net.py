"""virtio-net (VIRTIO 1.2 section 5.1): one receive and one transmit queue.

Only what a driver needs to move plain Ethernet frames is offered: the MAC
address and the link status. No checksum, segmentation or mergeable-buffer
offloads, so the guest computes its checksums and every frame travels in a
single chain behind the 12-byte `virtio_net_hdr` of VIRTIO_F_VERSION_1.

Frames for the guest come from the backend when the machine calls
`deliver()` (and when the driver posts receive buffers). Those that find no
buffer wait in a bounded queue; when it is full the oldest are dropped, so a
guest that never reads cannot make the monitor grow.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from typing import Any

from pocketvm.backends.net import NetBackend
from pocketvm.devices import virtio as v
from pocketvm.devices.guestlog import guest_error
from pocketvm.devices.virtqueue import Chain, VirtQueue
from pocketvm.memory import GuestMemoryError

log = logging.getLogger(__name__)

# feature bits
F_MAC = 1 << 5
F_STATUS = 1 << 16

S_LINK_UP = 1

RX = 0  # receiveq1
TX = 1  # transmitq1

QUEUE_SIZE = 256
MIN_FRAME = 14  # an Ethernet header
MAX_FRAME = 65535
# Frames waiting for receive buffers: at most HELD_MAX * MAX_FRAME bytes.
HELD_MAX = 256
# Frames taken from the backend per deliver(). Not above HELD_MAX, so a batch
# only drops held frames when the guest had no buffer for them.
PULL_MAX = HELD_MAX

# flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers
_HDR = struct.Struct("<BBHHHHH")
# Every field is zero but num_buffers: without MRG_RXBUF a frame fills one chain.
_RX_HDR = _HDR.pack(0, 0, 0, 0, 0, 0, 1)
# mac, status, max_virtqueue_pairs (mtu is only there with F_MTU, not offered)
_CONFIG = struct.Struct("<6sHH")


def default_mac(index: int) -> bytes:
    """The MAC of network card `index`, numbered as QEMU numbers its cards."""
    if not 0 <= index <= 0xFF - 0x56:
        raise ValueError(f"no default MAC for network card {index}")
    return bytes((0x52, 0x54, 0x00, 0x12, 0x34, 0x56 + index))


def _check_mac(mac: bytes) -> bytes:
    if len(mac) != 6 or mac[0] & 1:
        raise ValueError(f"not a unicast MAC address: {mac.hex(':')}")
    return bytes(mac)


def _has_available(queue: VirtQueue) -> bool:
    """Whether the driver has made a chain available that is not yet popped."""
    if not queue.ready or queue.broken:
        return False
    try:
        return queue.ram.read_int(queue.driver_addr + 2, 2) != queue.last_avail
    except GuestMemoryError:
        return False  # pop() finds this out and stops the queue


class VirtioNet(v.VirtioDevice):
    device_id = v.ID_NET
    num_queues = 2
    queue_num_max = QUEUE_SIZE

    def __init__(self, backend: NetBackend, mac: bytes, link_up: bool = True):
        super().__init__()
        self.backend = backend
        self.mac = _check_mac(mac)
        self.link_up = link_up  # False: a card with its cable out (the guest sees no carrier)
        self.stats: dict[str, int] = {"tx_frames": 0, "rx_frames": 0, "rx_dropped": 0, "tx_dropped": 0}
        self._held: deque[bytes] = deque()
        # The last deliver() stopped at PULL_MAX, so the backend may hold
        # more; it only wakes the VM when frames arrive, not for these.
        self._backend_more = False

    def device_features(self) -> int:
        return F_MAC | F_STATUS

    def config_bytes(self) -> bytes:
        return _CONFIG.pack(self.mac, S_LINK_UP if self.link_up else 0, 1)

    def config_write(self, offset: int, data: bytes) -> None:
        # The mac is only writable in legacy devices; nothing else ever is.
        guest_error(log, "virtio-net: ignored config write at %#x", offset, level=logging.DEBUG)

    def queue_notify(self, q: int) -> None:
        if q == RX:
            self.deliver()
        else:
            self.serve_queue(TX, self._transmit)

    # --- transmit -------------------------------------------------------------------

    def _transmit(self, chain: Chain) -> int:
        assert self.transport is not None
        if chain.error:  # already logged by the queue
            self.stats["tx_dropped"] += 1
            return 0
        if chain.writable:
            guest_error(log, "virtio-net: transmit chain with device-writable buffers dropped")
            self.stats["tx_dropped"] += 1
            return 0
        # Checked before anything is copied: descriptors may all alias the
        # same RAM, so a chain can claim far more bytes than the host has.
        length = chain.readable_len - _HDR.size
        if not MIN_FRAME <= length <= MAX_FRAME:
            guest_error(log, "virtio-net: transmitted frame of %d bytes dropped", length)
            self.stats["tx_dropped"] += 1
            return 0
        # The header is ignored: without offloads it has nothing to say.
        self.backend.send(chain.read(self.transport.ram, _HDR.size, length))
        self.stats["tx_frames"] += 1
        return 0

    # --- receive ----------------------------------------------------------------------

    def deliver(self) -> None:
        """Move frames from the backend into the guest's receive buffers.

        Called by the machine's run loop (after the backend's wake) on its own
        thread; cheap when there is nothing to do. Interrupts the driver once.
        """
        pushed = self._fill_rx()  # frames already held go first
        self._pull()
        pushed = self._fill_rx() or pushed
        if self.transport is None:
            return
        if pushed:
            self.transport.notify_used(RX)
        rxq = self.transport.queues[RX]
        if rxq.broken:
            # The transport only checks this after a notification of its own.
            self.transport.needs_reset(f"queue {RX}: {rxq.broken}")

    def wants_attention(self) -> bool:
        """True when deliver() has work it could do now, so the VM should not sleep."""
        if self._backend_more:
            return True
        return bool(self._held) and self._rx_ready() and _has_available(self._rxq())

    @property
    def held_frames(self) -> int:
        """Frames received from the backend still waiting for a receive buffer."""
        return len(self._held)

    def _rxq(self) -> VirtQueue:
        assert self.transport is not None
        return self.transport.queues[RX]

    def _rx_ready(self) -> bool:
        t = self.transport
        if t is None or not t.status & v.STATUS_DRIVER_OK or t.status & v.STATUS_DEVICE_NEEDS_RESET:
            return False
        queue = t.queues[RX]
        return queue.ready and not queue.broken

    def _pull(self) -> None:
        for _ in range(PULL_MAX):
            frame = self.backend.receive()
            if frame is None:
                self._backend_more = False
                return
            if len(frame) > MAX_FRAME:
                # Rate-limited: what the backend relays may come from anyone on the network.
                guest_error(log, "virtio-net: backend produced a frame of %d bytes; dropped", len(frame))
                self.stats["rx_dropped"] += 1
                continue
            if len(self._held) >= HELD_MAX:
                # Counted, not logged: a guest that does not read would
                # otherwise use up the log budget meant for its real mistakes.
                self._held.popleft()
                self.stats["rx_dropped"] += 1
            self._held.append(frame)
        self._backend_more = True

    def _fill_rx(self) -> bool:
        """Hand held frames to available receive chains; True if any chain was used."""
        if not self._held or not self._rx_ready():
            return False
        queue = self._rxq()
        pushed = False
        for chain in queue.pop_available():
            queue.push(chain.head, self._receive_into(chain))
            pushed = True
            if not self._held:
                break
        return pushed

    def _receive_into(self, chain: Chain) -> int:
        """Write the next held frame into `chain`; returns the used length."""
        assert self.transport is not None
        # A chain the frame cannot go into keeps the frame for the next one.
        if chain.error:  # already logged by the queue
            return 0
        if chain.readable:
            guest_error(log, "virtio-net: receive chain with device-readable buffers returned unused")
            return 0
        frame = self._held.popleft()
        size = _HDR.size + len(frame)
        if size > chain.writable_len:
            # A cut frame would reach the guest's stack as a corrupt one.
            guest_error(
                log, "virtio-net: %d-byte frame dropped: receive chain holds %d",
                size, chain.writable_len, level=logging.DEBUG,
            )
            self.stats["rx_dropped"] += 1
            return 0
        self.stats["rx_frames"] += 1
        return chain.write(self.transport.ram, 0, _RX_HDR + frame)

    # --- state ---------------------------------------------------------------------------

    def reset(self) -> None:
        self._held.clear()
        self._backend_more = False

    def save(self) -> dict[str, Any]:
        # Held frames are not saved: the connections they belong to live in
        # the backend, which a restored VM does not get back.
        return {"mac": self.mac.hex(), "link_up": self.link_up, "stats": dict(self.stats)}

    def load(self, state: dict[str, Any]) -> None:
        self.reset()
        if "mac" in state:
            # The driver read the mac before the snapshot; it must not change under it.
            self.mac = _check_mac(bytes.fromhex(str(state["mac"])))
        for name, count in state.get("stats", {}).items():
            if name in self.stats:
                self.stats[name] = int(count)
        if bool(state.get("link_up", True)) != self.link_up and self.transport is not None:
            # The restored VM's cable is in or out unlike the snapshot's: the
            # driver believes what it last read, so tell it to look again.
            self.transport.config_changed()
