from __future__ import annotations

import pytest

from pocketvm.devices.virtqueue import Chain, VirtQueue, slice_segments
from pocketvm.memory import RAM_BASE


def test_slice_segments():
    segs = [(100, 10), (200, 5), (300, 20)]
    assert slice_segments(segs, 0, 35) == segs
    assert slice_segments(segs, 8, 4) == [(108, 2), (200, 2)]
    assert slice_segments(segs, 10, 5) == [(200, 5)]
    assert slice_segments(segs, 34, 10) == [(319, 1)]
    assert slice_segments(segs, 40, 10) == []


def test_chain_read_write_across_segments(ram):
    base = RAM_BASE + 0x8000
    chain = Chain(0, readable=[(base, 3), (base + 100, 5)], writable=[(base + 200, 2), (base + 300, 4)])
    ram.write(base, b"abc")
    ram.write(base + 100, b"defgh")
    assert chain.read(ram, 1, 5) == b"bcdef"
    assert chain.read(ram, 6, 10) == b"gh"  # short: the buffers end
    assert chain.write(ram, 1, b"XYZW") == 4
    assert ram.read(base + 200, 2) == b"\0X" and ram.read(base + 300, 4) == b"YZW\0"
    assert chain.readable_len == 8 and chain.writable_len == 6
    views = chain.writable_views(ram, 0, 6)
    views[1][:] = 7  # zero-copy: writes land in guest RAM
    assert ram.read(base + 300, 4) == b"\x07" * 4


def test_queue_size_validation(ram):
    with pytest.raises(ValueError):
        VirtQueue(ram, 100)
    q = VirtQueue(ram, 256)
    assert not q.set_num(0) and not q.set_num(48) and not q.set_num(512)
    assert q.set_num(64) and q.num == 64


def test_not_ready_queue_is_inert(ram):
    q = VirtQueue(ram, 16)
    assert q.pop() is None
    q.push(0, 1)  # ignored, no exception
    assert q.used_idx == 0


def test_looping_chain_is_capped_at_queue_size(ram):
    import struct

    desc, avail, used = RAM_BASE + 0x1000, RAM_BASE + 0x2000, RAM_BASE + 0x3000
    buf = RAM_BASE + 0x4000
    q = VirtQueue(ram, 16)
    q.desc_addr, q.driver_addr, q.device_addr, q.ready = desc, avail, used, True
    # 0 -> 1 -> 0 -> ... all device-writable.
    ram.write(desc, struct.pack("<QIHH", buf, 8, 3, 1) + struct.pack("<QIHH", buf, 8, 3, 0))
    ram.write_int(avail + 4, 2, 0)
    ram.write_int(avail + 2, 2, 1)
    chain = q.pop()
    assert chain is not None and chain.head == 0
    assert chain.error and "loop" in chain.error
    assert len(chain.writable) == 16
    assert q.pop() is None
    q.push(chain.head, 0)
    assert ram.read_int(used + 2, 2) == 1
