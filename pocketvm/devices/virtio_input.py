"""virtio-input (VIRTIO 1.2 section 5.8): a keyboard and an absolute pointer (tablet).

The device describes itself through its configuration space: the driver
writes `select` and `subsel` and reads back a name, ids, or the bitmap of
the event codes it may send (section 5.8.5). Events (Linux `input_event`
type/code/value triples) travel to the driver through the event queue, in
buffers it posts; the status queue carries LED changes back, which are
read and dropped.

Events come from another thread (the remote viewer): `post()` queues them
under a lock and wakes the VM, whose run loop calls `deliver()`. The queue
is bounded; when the guest does not read, the oldest whole reports (events
up to a SYN_REPORT) are dropped, so a stuck guest cannot make the monitor
grow.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from pocketvm.devices import virtio as v
from pocketvm.devices.guestlog import guest_error
from pocketvm.devices.virtqueue import Chain
from pocketvm.memory import GuestMemoryError

log = logging.getLogger(__name__)

ID_INPUT = 18

EVENTQ = 0
STATUSQ = 1

# config select values
CFG_UNSET = 0x00
CFG_ID_NAME = 0x01
CFG_ID_SERIAL = 0x02
CFG_ID_DEVIDS = 0x03
CFG_PROP_BITS = 0x10
CFG_EV_BITS = 0x11
CFG_ABS_INFO = 0x12

# Linux input event types and codes (include/uapi/linux/input-event-codes.h)
EV_SYN = 0x00
EV_KEY = 0x01
EV_REL = 0x02
EV_ABS = 0x03
EV_REP = 0x14
SYN_REPORT = 0
REL_HWHEEL = 0x06
REL_WHEEL = 0x08
ABS_X = 0x00
ABS_Y = 0x01
BTN_LEFT = 0x110
BTN_RIGHT = 0x111
BTN_MIDDLE = 0x112
INPUT_PROP_DIRECT = 0x01

BUS_VIRTUAL = 0x06
VENDOR = 0x0627  # as QEMU's virtio input devices
ABS_MAX = 0x7FFF  # tablet axes run 0..ABS_MAX over the whole screen, as QEMU's

MAX_PENDING = 1024  # events waiting for guest buffers
_EVENT = struct.Struct("<HHi")  # type, code, value
_CONFIG_HEAD = struct.Struct("<BBB5x")  # select, subsel, size
_ABSINFO = struct.Struct("<iiiii")  # min, max, fuzz, flat, res
_DEVIDS = struct.Struct("<HHHH")  # bustype, vendor, product, version

# Every key a keyboard reports: codes 1..248 cover the standard keys (KEY_ESC..KEY_MICMUTE).
KEYBOARD_KEYS = tuple(range(1, 249))


def _bitmap(codes: Iterable[int]) -> bytes:
    bits = bytearray(128)
    for c in codes:
        if 0 <= c < 1024:
            bits[c // 8] |= 1 << (c % 8)
    return bytes(bits).rstrip(b"\0")


class VirtioInput(v.VirtioDevice):
    """A virtio input device described by its name and the codes it sends per event type."""

    device_id = ID_INPUT
    num_queues = 2
    queue_num_max = 64

    def __init__(
        self,
        name: str,
        product: int,
        codes: dict[int, Iterable[int]],
        absinfo: dict[int, tuple[int, int]] | None = None,
        props: Iterable[int] = (),
    ):
        super().__init__()
        self.name = name.encode()[:128]
        self.serial = b"pocketvm-" + str(product).encode()
        self.product = product
        self.ev_bits = {etype: _bitmap(c) for etype, c in codes.items()}
        self.absinfo = dict(absinfo or {})
        self.prop_bits = _bitmap(props)
        self.select = 0
        self.subsel = 0
        self._pending: deque[tuple[int, int, int]] = deque()
        self._lock = threading.Lock()
        self.wake: Callable[[], None] = lambda: None
        self.stats: dict[str, int] = {"events": 0, "dropped": 0}

    # --- configuration space -----------------------------------------------------------

    def _payload(self) -> bytes:
        sel, sub = self.select, self.subsel
        if sel == CFG_ID_NAME and sub == 0:
            return self.name
        if sel == CFG_ID_SERIAL and sub == 0:
            return self.serial
        if sel == CFG_ID_DEVIDS and sub == 0:
            return _DEVIDS.pack(BUS_VIRTUAL, VENDOR, self.product, 1)
        if sel == CFG_PROP_BITS and sub == 0:
            return self.prop_bits
        if sel == CFG_EV_BITS:
            return self.ev_bits.get(sub, b"")
        if sel == CFG_ABS_INFO and sub in self.absinfo:
            lo, hi = self.absinfo[sub]
            return _ABSINFO.pack(lo, hi, 0, 0, 0)
        return b""

    def config_bytes(self) -> bytes:
        payload = self._payload()
        return _CONFIG_HEAD.pack(self.select, self.subsel, len(payload)) + payload.ljust(128, b"\0")

    def config_write(self, offset: int, data: bytes) -> None:
        # Only select and subsel are writable; a wider write that covers
        # them (a 2- or 4-byte store at offset 0) sets both.
        for i, b in enumerate(data):
            if offset + i == 0:
                self.select = b
            elif offset + i == 1:
                self.subsel = b
            else:
                guest_error(log, "virtio-input: write to read-only config byte %#x", offset + i, level=logging.DEBUG)
                return

    # --- events --------------------------------------------------------------------------

    def post(self, events: Iterable[tuple[int, int, int]]) -> None:
        """Queue events (type, code, value) for the guest; thread-safe.

        The caller ends each report with (EV_SYN, SYN_REPORT, 0).
        """
        events = list(events)
        with self._lock:
            self._pending.extend(events)
            while len(self._pending) > MAX_PENDING:
                self._drop_oldest_report()
        self.wake()

    def _drop_oldest_report(self) -> None:
        while self._pending:
            etype, code, _ = self._pending.popleft()
            self.stats["dropped"] += 1
            if etype == EV_SYN and code == SYN_REPORT:
                return

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def wants_attention(self) -> bool:
        """Events are waiting and the driver has a buffer for one."""
        t = self.transport
        if t is None or not self._pending or not t.status & v.STATUS_DRIVER_OK:
            return False
        q = t.queues[EVENTQ]
        if not q.ready or q.broken:
            return False
        try:
            return q.ram.read_int(q.driver_addr + 2, 2) != q.last_avail
        except GuestMemoryError:
            return False

    def deliver(self) -> None:
        """Move queued events into the driver's event buffers (on the VM's thread)."""
        t = self.transport
        if t is None or not self._pending:
            return
        if not t.status & v.STATUS_DRIVER_OK or t.status & v.STATUS_DEVICE_NEEDS_RESET:
            return
        queue = t.queues[EVENTQ]
        if not queue.ready or queue.broken:
            return
        pushed = False
        with self._lock:
            for chain in queue.pop_available():
                written = self._event_into(chain)
                queue.push(chain.head, written)
                pushed = True
                if not self._pending:
                    break
        if pushed:
            t.notify_used(EVENTQ)
        if queue.broken:
            t.needs_reset(f"queue {EVENTQ}: {queue.broken}")

    def _event_into(self, chain: Chain) -> int:
        assert self.transport is not None
        if chain.error or chain.readable or chain.writable_len < _EVENT.size:
            guest_error(log, "virtio-input: unusable event buffer returned empty", level=logging.DEBUG)
            return 0
        etype, code, value = self._pending.popleft()
        self.stats["events"] += 1
        return chain.write(self.transport.ram, 0, _EVENT.pack(etype, code, value))

    # --- transport hooks -------------------------------------------------------------------

    def queue_notify(self, q: int) -> None:
        if q == EVENTQ:
            self.deliver()
        else:
            # LED states (caps lock...) from the guest: nothing to show them on.
            self.serve_queue(STATUSQ, lambda chain: 0)

    def reset(self) -> None:
        self.select = 0
        self.subsel = 0
        with self._lock:
            self._pending.clear()

    def save(self) -> dict[str, Any]:
        with self._lock:
            pending = [list(e) for e in self._pending]
        return {"select": self.select, "subsel": self.subsel, "pending": pending, "stats": dict(self.stats)}

    def load(self, state: dict[str, Any]) -> None:
        self.select = int(state["select"]) & 0xFF
        self.subsel = int(state["subsel"]) & 0xFF
        events = [(int(t) & 0xFFFF, int(c) & 0xFFFF, int(val)) for t, c, val in state.get("pending", [])][-MAX_PENDING:]
        with self._lock:
            self._pending = deque(events)
        for name, count in state.get("stats", {}).items():
            if name in self.stats:
                self.stats[name] = int(count)


def keyboard() -> VirtioInput:
    # No EV_REP: the viewer repeats keys itself (a held key arrives as repeated presses).
    return VirtioInput("pocketvm virtio keyboard", 1, {EV_KEY: KEYBOARD_KEYS})


def tablet() -> VirtioInput:
    return VirtioInput(
        "pocketvm virtio tablet",
        2,
        {EV_KEY: (BTN_LEFT, BTN_RIGHT, BTN_MIDDLE), EV_ABS: (ABS_X, ABS_Y), EV_REL: (REL_WHEEL, REL_HWHEEL)},
        absinfo={ABS_X: (0, ABS_MAX), ABS_Y: (0, ABS_MAX)},
    )
