"""virtio-gpu through a scripted guest driver: every 2D command, the cursor, hostile requests."""

from __future__ import annotations

import logging
import random
import struct

import numpy as np
import pytest
from virtio_guest import GuestDriver, scramble_rings

from pocketvm.backends.display.screen import Rect, Screen
from pocketvm.devices import virtio as v
from pocketvm.devices import virtio_gpu as g
from pocketvm.devices import virtio_mmio as m
from pocketvm.devices.virtio_mmio import VirtioMmio
from pocketvm.memory import RAM_BASE, GuestRAM
from pocketvm.snapshot.format import dump_state, load_state

RAM_SIZE = 8 << 20
HDR = 24
PAGE = 4096


def hdr(ctype: int, flags: int = 0, fence: int = 0) -> bytes:
    return struct.pack("<IIQIB3x", ctype, flags, fence, 0, 0)


class Gpu:
    """A guest driving both queues of a virtio-gpu, with its rings and data in RAM."""

    def __init__(self, width: int = 1024, height: int = 768):
        self.ram = GuestRAM(RAM_SIZE)
        self.irqs: list[bool] = []
        from pocketvm.devices.base import IrqLine

        self.screen = Screen(width, height)
        self.viewer = self.screen.attach(lambda: None)
        self.viewer.take_damage()
        self.gpu = g.VirtioGpu(self.screen)
        self.dev = VirtioMmio(self.ram, IrqLine(lambda s, lvl: self.irqs.append(lvl), 1), self.gpu)
        self.ctrl = GuestDriver(self.dev, self.ram)
        self.cur = GuestDriver(self.dev, self.ram)
        self.cur.DESC, self.cur.AVAIL, self.cur.USED = RAM_BASE + 0x5000, RAM_BASE + 0x7000, RAM_BASE + 0x8000
        self.cur.data_next = RAM_BASE + 0x40000
        self.ctrl.data_next = RAM_BASE + 0x20000
        self.pages_next = RAM_BASE + 0x100000  # backing pages from here

    def start(self) -> None:
        assert self.ctrl.negotiate(v.F_VERSION_1 | g.F_EDID)
        self.ctrl.setup_queue(g.CONTROLQ)
        self.cur.setup_queue(g.CURSORQ)
        self.ctrl.set(m.STATUS, self.ctrl.reg(m.STATUS) | v.STATUS_DRIVER_OK)

    def command(self, request: bytes, resp_len: int = HDR, parts: int = 1) -> bytes:
        """Send a request (split into `parts` readable buffers); returns the response."""
        self.ctrl.data_next = RAM_BASE + 0x20000  # reuse the data area: one request at a time
        cut = [len(request) * i // parts for i in range(parts + 1)]
        bufs = [(self.ctrl.alloc(request[a:b]), b - a, False) for a, b in zip(cut, cut[1:])]
        resp = self.ctrl.alloc(resp_len)
        head = self.ctrl.post_chain(bufs + [(resp, resp_len, True)])
        self.ctrl.notify(g.CONTROLQ)
        used = self.ctrl.used()
        assert [u[0] for u in used] == [head]
        return self.ram.read(resp, used[0][1])

    def rtype(self, request: bytes, parts: int = 1) -> int:
        return struct.unpack_from("<I", self.command(request, parts=parts))[0]

    def create(self, rid: int, w: int, h: int, fmt: int = g.FORMAT_B8G8R8X8) -> int:
        return self.rtype(hdr(g.CMD_RESOURCE_CREATE_2D) + struct.pack("<IIII", rid, fmt, w, h))

    def attach(self, rid: int, entries: list[tuple[int, int]], count: int | None = None) -> int:
        body = struct.pack("<II", rid, len(entries) if count is None else count)
        body += b"".join(struct.pack("<QII", a, n, 0) for a, n in entries)
        # As Linux sends it: the command, then the entries in a buffer of their own.
        return self.rtype(hdr(g.CMD_RESOURCE_ATTACH_BACKING) + body, parts=2)

    def backing(self, size: int, shuffle: bool = True) -> list[tuple[int, int]]:
        """Guest pages for `size` bytes, not contiguous and out of order."""
        n = -(-size // PAGE)
        pages = [self.pages_next + 2 * PAGE * i for i in range(n)]  # every other page
        self.pages_next += 2 * PAGE * n
        order = list(range(n))
        if shuffle:
            random.Random(n).shuffle(order)
        return [(pages[i], PAGE) for i in order]

    def write_backing(self, entries: list[tuple[int, int]], data: bytes) -> None:
        pos = 0
        for addr, n in entries:
            self.ram.write(addr, data[pos : pos + n])
            pos += n
            if pos >= len(data):
                break

    def transfer(self, rid: int, r: tuple[int, int, int, int], offset: int = 0) -> int:
        return self.rtype(hdr(g.CMD_TRANSFER_TO_HOST_2D) + struct.pack("<IIIIQII", *r, offset, rid, 0))

    def set_scanout(self, rid: int, r: tuple[int, int, int, int], scanout: int = 0) -> int:
        return self.rtype(hdr(g.CMD_SET_SCANOUT) + struct.pack("<IIIIII", *r, scanout, rid))

    def flush(self, rid: int, r: tuple[int, int, int, int]) -> int:
        return self.rtype(hdr(g.CMD_RESOURCE_FLUSH) + struct.pack("<IIIIII", *r, rid, 0))

    def unref(self, rid: int) -> int:
        return self.rtype(hdr(g.CMD_RESOURCE_UNREF) + struct.pack("<II", rid, 0))

    def cursor(self, ctype: int, rid: int, x: int, y: int, hot: tuple[int, int] = (0, 0)) -> None:
        self.cur.data_next = RAM_BASE + 0x40000
        req = hdr(ctype) + struct.pack("<IIIIIIII", 0, x, y, 0, rid, hot[0], hot[1], 0)
        head = self.cur.post_chain([(self.cur.alloc(req), len(req), False)])
        self.cur.notify(g.CURSORQ)
        assert self.cur.used() == [(head, 0)]

    def framebuffer(self, rid: int, w: int, h: int, fmt: int = g.FORMAT_B8G8R8X8, seed: int = 1) -> tuple[list, np.ndarray]:
        """A resource with backing filled with random pixels: (entries, pixels as (h, w, 4))."""
        assert self.create(rid, w, h, fmt) == g.RESP_OK_NODATA
        entries = self.backing(w * h * 4)
        pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
        self.write_backing(entries, pixels.tobytes())
        assert self.attach(rid, entries) == g.RESP_OK_NODATA
        return entries, pixels


@pytest.fixture
def gpu() -> Gpu:
    t = Gpu()
    t.start()
    return t


def test_identity_features_and_config(gpu):
    assert gpu.dev.read(m.DEVICE_ID, 4) == 16
    offered = gpu.ctrl.device_features()
    assert offered & g.F_EDID and not offered & 1  # no virgl (3D)
    assert gpu.dev.read(m.CONFIG + 8, 4) == 1  # num_scanouts
    assert gpu.dev.read(m.CONFIG + 12, 4) == 0  # num_capsets
    assert gpu.dev.read(m.CONFIG, 4) == 0  # events_read
    gpu.gpu.set_preferred_size(800, 600)
    assert gpu.dev.read(m.CONFIG, 4) == g.EVENT_DISPLAY
    assert gpu.dev.read(m.INTERRUPT_STATUS, 4) & m.INT_CONFIG_CHANGE
    gpu.dev.write(m.CONFIG + 4, 4, g.EVENT_DISPLAY)  # events_clear
    assert gpu.dev.read(m.CONFIG, 4) == 0
    for q in (0, 1):
        gpu.ctrl.set(m.QUEUE_SEL, q)
        assert gpu.ctrl.reg(m.QUEUE_NUM_MAX) == 256


def test_display_info(gpu):
    resp = gpu.command(hdr(g.CMD_GET_DISPLAY_INFO), HDR + 16 * 24)
    assert struct.unpack_from("<I", resp)[0] == g.RESP_OK_DISPLAY_INFO
    x, y, w, h, enabled, flags = struct.unpack_from("<IIIIII", resp, HDR)
    assert (x, y, w, h, enabled) == (0, 0, 1024, 768, 1)
    assert resp[HDR + 24 :] == bytes(15 * 24)  # the other scanouts are off


def test_edid(gpu):
    resp = gpu.command(hdr(g.CMD_GET_EDID) + struct.pack("<II", 0, 0), HDR + 8 + 1024)
    assert struct.unpack_from("<I", resp)[0] == g.RESP_OK_EDID
    size = struct.unpack_from("<I", resp, HDR)[0]
    edid = resp[HDR + 8 : HDR + 8 + size]
    assert size == 128 and edid[:8] == b"\x00\xff\xff\xff\xff\xff\xff\x00" and sum(edid) % 256 == 0
    dtd = edid[54:72]  # the preferred timing is the display's size
    assert dtd[2] | (dtd[4] >> 4) << 8 == 1024 and dtd[5] | (dtd[7] >> 4) << 8 == 768
    assert gpu.rtype(hdr(g.CMD_GET_EDID) + struct.pack("<II", 1, 0)) == g.RESP_ERR_INVALID_SCANOUT_ID


def test_framebuffer_reaches_the_screen(gpu):
    w, h = 64, 48
    _, pixels = gpu.framebuffer(1, w, h)
    assert gpu.transfer(1, (0, 0, w, h)) == g.RESP_OK_NODATA
    assert gpu.set_scanout(1, (0, 0, w, h)) == g.RESP_OK_NODATA
    assert (gpu.screen.width, gpu.screen.height) == (w, h)  # the guest's mode
    assert np.array_equal(gpu.screen.pixels, pixels)
    assert gpu.viewer.resized
    gpu.viewer.take_damage()
    assert gpu.flush(1, (0, 0, w, h)) == g.RESP_OK_NODATA
    assert gpu.viewer.take_damage() == []  # nothing changed


def test_only_changed_pixels_are_damage(gpu):
    # Linux's fbdev emulation flushes the whole screen for one character or
    # a blinking cursor: the viewers get the character's cell.
    w, h = 64, 48
    entries, pixels = gpu.framebuffer(1, w, h)
    gpu.transfer(1, (0, 0, w, h))
    gpu.set_scanout(1, (0, 0, w, h))
    gpu.viewer.take_damage()
    pixels[20:36, 8:16] = 0xEE  # one 8x16 cell
    gpu.write_backing(entries, pixels.tobytes())
    gpu.transfer(1, (0, 0, w, h))
    gpu.flush(1, (0, 0, w, h))
    assert gpu.viewer.take_damage() == [Rect(8, 20, 8, 16)]
    assert np.array_equal(gpu.screen.pixels, pixels)


def test_partial_transfer_and_flush_change_only_their_rectangle(gpu):
    w, h = 64, 48
    entries, pixels = gpu.framebuffer(1, w, h)
    gpu.transfer(1, (0, 0, w, h))
    gpu.set_scanout(1, (0, 0, w, h))
    gpu.viewer.take_damage()
    before = gpu.screen.pixels.copy()
    new = np.random.default_rng(9).integers(0, 256, (h, w, 4), dtype=np.uint8)
    gpu.write_backing(entries, new.tobytes())  # the guest redraws everything in its memory...
    x, y, rw, rh = 8, 4, 16, 8
    offset = (y * w + x) * 4  # as Linux computes it
    assert gpu.transfer(1, (x, y, rw, rh), offset) == g.RESP_OK_NODATA  # ...but transfers a part
    assert np.array_equal(gpu.screen.pixels, before)  # nothing shows before the flush
    assert gpu.flush(1, (x, y, rw, rh)) == g.RESP_OK_NODATA
    expect = pixels.copy()
    expect[y : y + rh, x : x + rw] = new[y : y + rh, x : x + rw]
    assert np.array_equal(gpu.screen.pixels, expect)
    assert gpu.viewer.take_damage() == [Rect(x, y, rw, rh)]


@pytest.mark.parametrize("fmt,order", [
    (g.FORMAT_B8G8R8A8, [0, 1, 2]), (g.FORMAT_X8R8G8B8, [3, 2, 1]), (g.FORMAT_R8G8B8X8, [2, 1, 0]),
    (g.FORMAT_A8B8G8R8, [1, 2, 3]), (g.FORMAT_R8G8B8A8, [2, 1, 0]), (g.FORMAT_X8B8G8R8, [1, 2, 3]),
])  # fmt: skip
def test_formats_are_converted(gpu, fmt, order):
    w, h = 16, 8
    _, pixels = gpu.framebuffer(1, w, h, fmt)
    gpu.transfer(1, (0, 0, w, h))
    gpu.set_scanout(1, (0, 0, w, h))
    # order: where B, G, R sit in the guest's pixel
    assert np.array_equal(gpu.screen.pixels[:, :, :3], pixels[:, :, order])


def test_backing_in_odd_pieces(gpu):
    # Entries that are not whole pages take the general path; same pixels.
    w, h = 64, 48
    assert gpu.create(1, w, h) == g.RESP_OK_NODATA
    pixels = np.random.default_rng(4).integers(0, 256, (h, w, 4), dtype=np.uint8)
    data = pixels.tobytes()
    sizes = [1000, 3, 4093, 777] * 10
    entries, pos, addr = [], 0, RAM_BASE + 0x300000
    for n in sizes:
        n = min(n, len(data) - pos)
        if n <= 0:
            break
        gpu.ram.write(addr + 5, data[pos : pos + n])  # unaligned too
        entries.append((addr + 5, n))
        pos += n
        addr += 8192
    assert gpu.attach(1, entries) == g.RESP_OK_NODATA
    assert gpu.gpu.resources[1].backing_pages is None
    assert gpu.transfer(1, (0, 0, w, h)) == g.RESP_OK_NODATA
    assert gpu.transfer(1, (3, 5, 20, 7), (5 * w + 3) * 4) == g.RESP_OK_NODATA
    assert gpu.set_scanout(1, (0, 0, w, h)) == g.RESP_OK_NODATA
    assert np.array_equal(gpu.screen.pixels, pixels)


def test_scanout_of_part_of_a_resource(gpu):
    _, pixels = gpu.framebuffer(1, 64, 48)
    gpu.transfer(1, (0, 0, 64, 48))
    assert gpu.set_scanout(1, (16, 8, 32, 24)) == g.RESP_OK_NODATA
    assert np.array_equal(gpu.screen.pixels, pixels[8:32, 16:48])
    gpu.viewer.take_damage()
    gpu.gpu.resources[1].pixels[:] ^= 0xFF  # everything changes...
    gpu.flush(1, (0, 0, 20, 10))  # ...but this overlaps the scanout's corner only
    assert gpu.viewer.take_damage() == [Rect(0, 0, 4, 2)]


def test_overlapping_rectangles(gpu):
    w, h = 64, 48
    entries, _ = gpu.framebuffer(1, w, h)
    gpu.transfer(1, (0, 0, w, h))
    gpu.set_scanout(1, (0, 0, w, h))
    gpu.viewer.take_damage()
    # Overlapping flushes are merged for the viewer; a separate one stays apart.
    gpu.gpu.resources[1].pixels[:] ^= 0xFF  # every pixel differs from the screen
    for r in ((0, 0, 20, 20), (10, 10, 20, 20), (50, 40, 4, 4)):
        assert gpu.flush(1, r) == g.RESP_OK_NODATA
    assert sorted(gpu.viewer.take_damage(), key=lambda r: r.x) == [Rect(0, 0, 30, 30), Rect(50, 40, 4, 4)]
    # Overlapping transfers: the later one wins where they overlap.
    a = np.full((h, w, 4), 0x11, np.uint8)
    gpu.write_backing(entries, a.tobytes())
    gpu.transfer(1, (0, 0, 32, 32))
    b = np.full((h, w, 4), 0x22, np.uint8)
    gpu.write_backing(entries, b.tobytes())
    gpu.transfer(1, (16, 16, 32, 32), (16 * w + 16) * 4)
    gpu.flush(1, (0, 0, w, h))
    px = gpu.screen.pixels
    assert (px[0:16, 0:32] == 0x11).all() and (px[16:48, 16:48] == 0x22).all() and (px[0:16, 0:16] == 0x11).all()


def test_bad_resource_ids(gpu):
    bad = g.RESP_ERR_INVALID_RESOURCE_ID
    assert gpu.create(0, 8, 8) == bad  # 0 is never a resource
    assert gpu.create(1, 8, 8) == g.RESP_OK_NODATA
    assert gpu.create(1, 8, 8) == bad  # taken
    for rid in (0, 2, 0xFFFFFFFF):
        assert gpu.unref(rid) == bad
        assert gpu.flush(rid, (0, 0, 1, 1)) == bad
        assert gpu.transfer(rid, (0, 0, 1, 1)) == bad
        assert gpu.attach(rid, [(RAM_BASE + 0x100000, PAGE)]) == bad
        assert gpu.rtype(hdr(g.CMD_RESOURCE_DETACH_BACKING) + struct.pack("<II", rid, 0)) == bad
        assert gpu.set_scanout(rid, (0, 0, 1, 1)) == (bad if rid else g.RESP_OK_NODATA)
    assert gpu.unref(1) == g.RESP_OK_NODATA
    assert gpu.unref(1) == bad  # gone
    assert gpu.set_scanout(1, (0, 0, 8, 8), scanout=1) == g.RESP_ERR_INVALID_SCANOUT_ID
    assert gpu.gpu.stats["errors"] > 0


def test_backing_outside_ram(gpu):
    assert gpu.create(1, 32, 32) == g.RESP_OK_NODATA
    end = RAM_BASE + RAM_SIZE
    for entry in ((0, PAGE), (end, PAGE), (end - 100, PAGE), (RAM_BASE - PAGE, PAGE), ((1 << 64) - PAGE, PAGE)):
        good = (RAM_BASE + 0x100000, PAGE)
        assert gpu.attach(1, [good, entry]) == g.RESP_ERR_UNSPEC
        assert gpu.gpu.resources[1].backing == []  # nothing half-attached
    assert gpu.transfer(1, (0, 0, 32, 32)) == g.RESP_ERR_UNSPEC  # no backing
    assert gpu.attach(1, [], count=0) == g.RESP_ERR_INVALID_PARAMETER
    assert gpu.attach(1, [(RAM_BASE + 0x100000, PAGE)], count=g.MAX_BACKING_ENTRIES + 1) == g.RESP_ERR_INVALID_PARAMETER
    assert gpu.attach(1, [(RAM_BASE + 0x100000, PAGE)], count=5) == g.RESP_ERR_UNSPEC  # entries missing
    # Backing smaller than the transfer: refused, not read past its end.
    assert gpu.attach(1, [(RAM_BASE + 0x100000, PAGE)]) == g.RESP_OK_NODATA
    assert gpu.attach(1, [(RAM_BASE + 0x100000, PAGE)]) == g.RESP_ERR_UNSPEC  # already has one
    assert gpu.transfer(1, (0, 0, 32, 32)) == g.RESP_OK_NODATA  # exactly 4096 bytes
    assert gpu.transfer(1, (0, 31, 32, 1), offset=PAGE - 64) == g.RESP_ERR_INVALID_PARAMETER
    assert gpu.transfer(1, (0, 0, 1, 1), offset=PAGE) == g.RESP_ERR_INVALID_PARAMETER
    assert gpu.transfer(1, (0, 0, 1, 1), offset=(1 << 64) - 1) == g.RESP_ERR_INVALID_PARAMETER
    assert gpu.rtype(hdr(g.CMD_RESOURCE_DETACH_BACKING) + struct.pack("<II", 1, 0)) == g.RESP_OK_NODATA
    assert gpu.transfer(1, (0, 0, 1, 1)) == g.RESP_ERR_UNSPEC


def test_backing_that_aliases_one_page(gpu):
    # Thousands of entries all naming the same page: accepted (it is the
    # guest's memory), and a transfer reads only what the rectangle needs.
    assert gpu.create(1, 1024, 768) == g.RESP_OK_NODATA
    page = RAM_BASE + 0x100000
    gpu.ram.write(page, bytes(range(256)) * 16)
    assert gpu.attach(1, [(page, PAGE)] * 768) == g.RESP_OK_NODATA
    assert gpu.transfer(1, (0, 0, 1024, 768)) == g.RESP_OK_NODATA
    row = gpu.gpu.resources[1].pixels[5]
    assert row.tobytes() == bytes(range(256)) * 16
    # The most entries, each naming all of RAM: the backing claims 128 GiB,
    # and the monitor allocates nothing in proportion.
    assert gpu.create(2, 64, 64) == g.RESP_OK_NODATA
    assert gpu.attach(2, [(RAM_BASE, RAM_SIZE)] * g.MAX_BACKING_ENTRIES) == g.RESP_OK_NODATA
    res = gpu.gpu.resources[2]
    assert res.backing_len == RAM_SIZE * g.MAX_BACKING_ENTRIES and res.backing_pages is None
    assert gpu.transfer(2, (0, 0, 64, 64), offset=RAM_SIZE * 100) == g.RESP_OK_NODATA


def test_huge_sizes_are_refused(gpu):
    oom = g.RESP_ERR_OUT_OF_MEMORY
    assert gpu.create(1, 0xFFFFFFFF, 0xFFFFFFFF) == oom
    assert gpu.create(1, 0, 10) == g.RESP_ERR_INVALID_PARAMETER
    assert gpu.create(1, 10, 10, fmt=999) == g.RESP_ERR_INVALID_PARAMETER
    # Up to the cap, then no more; freeing makes room again.
    side = 4096  # 64 MiB each
    for rid in range(1, 5):
        assert gpu.create(rid, side, side) == g.RESP_OK_NODATA
    assert gpu.create(5, side, side) == oom
    assert gpu.create(5, 1, 1) == oom
    assert gpu.gpu.hostmem == g.MAX_HOSTMEM
    assert gpu.unref(2) == g.RESP_OK_NODATA
    assert gpu.create(5, side, side) == g.RESP_OK_NODATA
    for rid in (1, 3, 4, 5):
        gpu.unref(rid)
    assert gpu.gpu.hostmem == 0 and gpu.gpu.resources == {}


def test_out_of_bounds_rectangles(gpu):
    gpu.framebuffer(1, 64, 48)
    bad = g.RESP_ERR_INVALID_PARAMETER
    for r in ((0, 0, 65, 48), (0, 0, 64, 49), (60, 0, 8, 8), (0, 0xFFFFFFFF, 1, 2), (0xFFFFFFF0, 0, 0x20, 1)):
        assert gpu.transfer(1, r) == bad
        assert gpu.flush(1, r) == bad
        assert gpu.set_scanout(1, r) == bad
    assert gpu.set_scanout(1, (0, 0, 0, 0)) == bad  # an empty scanout of a resource
    assert gpu.transfer(1, (3, 3, 0, 0)) == g.RESP_OK_NODATA  # empty transfer: nothing to do


def test_unref_and_disable_blank_the_screen(gpu):
    _, pixels = gpu.framebuffer(1, 64, 48)
    gpu.transfer(1, (0, 0, 64, 48))
    gpu.set_scanout(1, (0, 0, 64, 48))
    assert gpu.screen.pixels.any()
    assert gpu.set_scanout(0, (0, 0, 0, 0)) == g.RESP_OK_NODATA
    assert not gpu.screen.pixels.any()
    gpu.set_scanout(1, (0, 0, 64, 48))
    assert gpu.unref(1) == g.RESP_OK_NODATA
    assert not gpu.screen.pixels.any() and gpu.gpu.scanout_resource == 0


def test_cursor(gpu):
    _, image = gpu.framebuffer(7, 64, 64, g.FORMAT_B8G8R8A8)
    gpu.transfer(7, (0, 0, 64, 64))
    gpu.viewer.cursor_changed = False
    gpu.cursor(g.CMD_UPDATE_CURSOR, 7, 100, 200, hot=(3, 5))
    c = gpu.screen.cursor
    assert c.visible and np.array_equal(c.pixels, image) and (c.hot_x, c.hot_y) == (3, 5) and (c.x, c.y) == (100, 200)
    assert gpu.viewer.cursor_changed
    gpu.cursor(g.CMD_MOVE_CURSOR, 7, 300, 10)
    assert (c.x, c.y) == (300, 10)
    gpu.cursor(g.CMD_UPDATE_CURSOR, 99, 0, 0)  # no such resource: ignored
    assert gpu.screen.cursor.visible
    gpu.cursor(g.CMD_UPDATE_CURSOR, 0, 0, 0)  # hide
    assert not gpu.screen.cursor.visible
    gpu.cursor(0x1234, 7, 0, 0)  # unknown: ignored, still returned


def test_fence_is_echoed(gpu):
    resp = gpu.command(hdr(g.CMD_RESOURCE_CREATE_2D, g.FLAG_FENCE, 0xABCDEF) + struct.pack("<IIII", 1, 2, 8, 8))
    rtype, flags, fence = struct.unpack_from("<IIQ", resp)
    assert (rtype, flags & g.FLAG_FENCE, fence) == (g.RESP_OK_NODATA, g.FLAG_FENCE, 0xABCDEF)


def test_malformed_requests_get_errors(gpu):
    assert gpu.rtype(b"\x00" * 10) == g.RESP_ERR_UNSPEC  # shorter than a header
    assert gpu.rtype(hdr(g.CMD_RESOURCE_CREATE_2D) + b"\x01\x00") == g.RESP_ERR_UNSPEC  # truncated body
    assert gpu.rtype(hdr(0x0999)) == g.RESP_ERR_UNSPEC  # unknown command
    assert gpu.rtype(hdr(0x0200)) == g.RESP_ERR_UNSPEC  # a 3D command
    assert gpu.rtype(hdr(g.CMD_GET_CAPSET_INFO) + bytes(8)) == g.RESP_ERR_INVALID_PARAMETER
    # A chain with no room for a response is returned with nothing written.
    req = hdr(g.CMD_GET_DISPLAY_INFO)
    head = gpu.ctrl.post_chain([(gpu.ctrl.alloc(req), len(req), False)])
    gpu.ctrl.notify(g.CONTROLQ)
    assert gpu.ctrl.used() == [(head, 0)]
    assert not gpu.dev.read(m.STATUS, 4) & v.STATUS_DEVICE_NEEDS_RESET


def test_reset_forgets_resources(gpu):
    gpu.framebuffer(1, 64, 48)
    gpu.ctrl.set(m.STATUS, 0)
    assert gpu.gpu.resources == {} and gpu.gpu.hostmem == 0


def test_snapshot_round_trip(gpu):
    entries, pixels = gpu.framebuffer(1, 64, 48)
    gpu.transfer(1, (0, 0, 64, 48))
    gpu.set_scanout(1, (0, 0, 64, 48))
    gpu.framebuffer(7, 64, 64, g.FORMAT_B8G8R8A8, seed=3)
    gpu.transfer(7, (0, 0, 64, 64))
    gpu.cursor(g.CMD_UPDATE_CURSOR, 7, 5, 6, hot=(1, 2))
    state = load_state(dump_state({"t": gpu.dev.save()}))["t"]

    other = Gpu()
    other.dev.load(state)
    assert np.array_equal(other.screen.pixels, pixels)
    assert other.viewer.has_news()  # a viewer of the restored VM is sent the screen
    c = other.screen.cursor
    assert c.visible and (c.hot_x, c.hot_y, c.x, c.y) == (1, 2, 5, 6)
    # The guest goes on with its resources where they were.
    new = np.full((48, 64, 4), 7, np.uint8)
    other.write_backing(entries, new.tobytes())
    other.ctrl.last_used = gpu.ctrl.last_used
    other.ctrl.avail_idx = gpu.ctrl.avail_idx
    other.ctrl.next_desc = gpu.ctrl.next_desc
    assert other.transfer(1, (0, 0, 64, 48)) == g.RESP_OK_NODATA
    assert other.flush(1, (0, 0, 64, 48)) == g.RESP_OK_NODATA
    assert (other.screen.pixels == 7).all()


def test_edited_snapshot_is_refused(gpu):
    gpu.framebuffer(1, 64, 48)
    state = gpu.dev.save()
    for edit in (
        lambda s: s["device"]["resources"][0].update(width=1 << 20, height=1 << 20),
        lambda s: s["device"]["resources"][0].update(backing=[[0, 4096]]),
        lambda s: s["device"]["resources"][0].update(pixels=b"garbage"),
        lambda s: s["device"]["scanout"].update(resource=9),
    ):
        bad = load_state(dump_state(state))
        edit(bad)
        with pytest.raises((ValueError, KeyError)):
            Gpu().dev.load(bad)


def test_random_commands_never_crash_the_device(gpu, caplog):
    rnd = random.Random(1234)
    gpu.framebuffer(1, 64, 48)
    interesting = [0, 1, 2, 7, 48, 64, 0xFFFF, 0xFFFFFFFF, RAM_BASE, RAM_BASE + RAM_SIZE - 4]
    types = [g.CMD_GET_DISPLAY_INFO, g.CMD_RESOURCE_CREATE_2D, g.CMD_RESOURCE_UNREF, g.CMD_SET_SCANOUT,
             g.CMD_RESOURCE_FLUSH, g.CMD_TRANSFER_TO_HOST_2D, g.CMD_RESOURCE_ATTACH_BACKING,
             g.CMD_RESOURCE_DETACH_BACKING, g.CMD_GET_EDID, 0x0200, 0]
    with caplog.at_level(logging.ERROR):
        for _ in range(600):
            words = [rnd.choice(interesting) if rnd.random() < 0.7 else rnd.getrandbits(32) for _ in range(10)]
            body = struct.pack("<10I", *words)[: rnd.randrange(0, 41)]
            rtype = gpu.rtype(hdr(rnd.choice(types)) + body)
            assert 0x1100 <= rtype <= 0x1205
    assert "crashed" not in caplog.text
    assert not gpu.dev.read(m.STATUS, 4) & v.STATUS_DEVICE_NEEDS_RESET
    assert gpu.gpu.hostmem <= g.MAX_HOSTMEM


def test_scrambled_rings_never_crash_the_device(caplog):
    rnd = random.Random(77)
    with caplog.at_level(logging.ERROR):
        for _ in range(40):
            t = Gpu()
            t.start()
            scramble_rings(t.ctrl, rnd, [RAM_BASE + 0x20000, 0, RAM_BASE + RAM_SIZE - 8], [0, 8, 24, 64, 1 << 31])
            t.ctrl.notify(g.CONTROLQ)
            scramble_rings(t.cur, rnd, [RAM_BASE + 0x40000, 0], [0, 56, 4096])
            t.cur.notify(g.CURSORQ)
    assert "crashed" not in caplog.text
