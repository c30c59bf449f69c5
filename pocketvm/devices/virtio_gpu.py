"""virtio-gpu, 2D only (VIRTIO 1.2 section 5.7): one scanout, the cursor queue, EDID.

The driver creates resources (host-side pixel arrays), attaches guest pages
as their backing, copies rectangles of the backing into them
(TRANSFER_TO_HOST_2D), and shows one on the scanout (SET_SCANOUT); a
RESOURCE_FLUSH copies the flushed rectangle to the `Screen` that a viewer
reads. Everything the guest sends is checked before use:

- resource ids must exist (0 is never one), formats must be known;
- the pixels of all resources together are capped (`MAX_HOSTMEM`, as
  QEMU's max_hostmem), so a guest cannot make the monitor allocate without
  bound; backing lists are capped in entries (`MAX_BACKING_ENTRIES`);
- every backing entry must lie in guest RAM (checked when attached, and
  again when copied through `GuestRAM`), and a transfer must stay inside
  both the resource and its backing;
- rectangles must lie inside their resource or scanout.

A bad request gets an error response (VIRTIO_GPU_RESP_ERR_*), never a
crash. Copies are numpy slices, never loops over pixels.
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pocketvm.backends.display.screen import Rect, Screen, inflate_exact
from pocketvm.devices import virtio as v
from pocketvm.devices.guestlog import guest_error
from pocketvm.devices.virtqueue import Chain
from pocketvm.memory import GuestMemoryError, GuestRAM

log = logging.getLogger(__name__)

ID_GPU = 16

CONTROLQ = 0
CURSORQ = 1

F_EDID = 1 << 1

# command types
CMD_GET_DISPLAY_INFO = 0x0100
CMD_RESOURCE_CREATE_2D = 0x0101
CMD_RESOURCE_UNREF = 0x0102
CMD_SET_SCANOUT = 0x0103
CMD_RESOURCE_FLUSH = 0x0104
CMD_TRANSFER_TO_HOST_2D = 0x0105
CMD_RESOURCE_ATTACH_BACKING = 0x0106
CMD_RESOURCE_DETACH_BACKING = 0x0107
CMD_GET_CAPSET_INFO = 0x0108
CMD_GET_CAPSET = 0x0109
CMD_GET_EDID = 0x010A
CMD_UPDATE_CURSOR = 0x0300
CMD_MOVE_CURSOR = 0x0301

# response types
RESP_OK_NODATA = 0x1100
RESP_OK_DISPLAY_INFO = 0x1101
RESP_OK_EDID = 0x1104
RESP_ERR_UNSPEC = 0x1200
RESP_ERR_OUT_OF_MEMORY = 0x1201
RESP_ERR_INVALID_SCANOUT_ID = 0x1202
RESP_ERR_INVALID_RESOURCE_ID = 0x1203
RESP_ERR_INVALID_CONTEXT_ID = 0x1204
RESP_ERR_INVALID_PARAMETER = 0x1205

FLAG_FENCE = 1

EVENT_DISPLAY = 1

# Formats (enum virtio_gpu_formats) -> byte order of a pixel in memory, as
# indices of (B, G, R, A/X) in it: how to turn it into the screen's B G R X.
FORMAT_B8G8R8A8 = 1
FORMAT_B8G8R8X8 = 2
FORMAT_A8R8G8B8 = 3
FORMAT_X8R8G8B8 = 4
FORMAT_R8G8B8A8 = 67
FORMAT_X8B8G8R8 = 68
FORMAT_A8B8G8R8 = 121
FORMAT_R8G8B8X8 = 134
_TO_BGRX: dict[int, tuple[int, int, int, int]] = {
    FORMAT_B8G8R8A8: (0, 1, 2, 3),
    FORMAT_B8G8R8X8: (0, 1, 2, 3),
    FORMAT_A8R8G8B8: (3, 2, 1, 0),
    FORMAT_X8R8G8B8: (3, 2, 1, 0),
    FORMAT_R8G8B8A8: (2, 1, 0, 3),
    FORMAT_R8G8B8X8: (2, 1, 0, 3),
    FORMAT_X8B8G8R8: (1, 2, 3, 0),
    FORMAT_A8B8G8R8: (1, 2, 3, 0),
}
BPP = 4  # every 2D format is 32 bits per pixel
PAGE = 4096

MAX_SCANOUTS = 16
MAX_HOSTMEM = 256 << 20  # all resources' pixels together
MAX_BACKING_ENTRIES = 16384
MAX_RESOURCES = 4096
CURSOR_SIZE = 64  # Linux's cursor resources are 64x64
SCRATCH_KEEP = 16 << 20  # transfer scratch buffers up to this size are reused

_HDR = struct.Struct("<IIQIB3x")  # type, flags, fence_id, ctx_id, ring_idx
_RECT = struct.Struct("<IIII")
_CREATE_2D = struct.Struct("<IIII")  # resource_id, format, width, height
_ID_PAD = struct.Struct("<II")  # resource_id, padding (unref, detach)
_SET_SCANOUT = struct.Struct("<IIIIII")  # rect, scanout_id, resource_id
_FLUSH = struct.Struct("<IIIIII")  # rect, resource_id, padding
_TRANSFER = struct.Struct("<IIIIQII")  # rect, offset, resource_id, padding
_ATTACH = struct.Struct("<II")  # resource_id, nr_entries
_MEM_ENTRY = struct.Struct("<QII")  # addr, length, padding
_CURSOR = struct.Struct("<IIIIIIII")  # pos (scanout, x, y, pad), resource_id, hot_x, hot_y, pad
_CONFIG = struct.Struct("<IIII")  # events_read, events_clear, num_scanouts, num_capsets
_DISPLAY_ONE = struct.Struct("<IIIIII")  # rect, enabled, flags


@dataclass
class Resource:
    id: int
    format: int
    width: int
    height: int
    pixels: np.ndarray  # (height, width * 4) uint8, in the resource's own format
    backing: list[tuple[int, int]] = field(default_factory=list)  # (guest address, length)
    backing_ends: np.ndarray | None = None  # cumulative lengths, for lookups
    # When the backing is whole, aligned guest pages (as Linux gives it):
    # the RAM page number of each backing page, for copies in one numpy call.
    backing_pages: np.ndarray | None = None

    def set_backing(self, backing: list[tuple[int, int]], ram_base: int) -> None:
        self.backing = backing
        self.backing_ends = np.cumsum(np.array([n for _, n in backing], dtype=np.int64))
        self.backing_pages = None
        # Entries may all name the same RAM, so their total can dwarf RAM:
        # the page table is only built for a backing about the resource's size.
        total = int(self.backing_ends[-1])
        if total <= 2 * self.height * self.stride + PAGE and all(a % PAGE == 0 and n % PAGE == 0 for a, n in backing):
            self.backing_pages = np.concatenate(
                [np.arange((a - ram_base) // PAGE, (a - ram_base + n) // PAGE, dtype=np.int64) for a, n in backing]
            )

    def clear_backing(self) -> None:
        self.backing = []
        self.backing_ends = None
        self.backing_pages = None

    @property
    def stride(self) -> int:
        return self.width * BPP

    @property
    def backing_len(self) -> int:
        return int(self.backing_ends[-1]) if self.backing_ends is not None and len(self.backing_ends) else 0


class GpuError(Exception):
    """A request the device refuses: answered with the response type `code`."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _bgrx(fmt: int, pixels: np.ndarray) -> np.ndarray:
    """(h, w*4) pixels of format `fmt` -> (h, w, 4) B G R X."""
    px = pixels.reshape(pixels.shape[0], -1, 4)
    order = _TO_BGRX[fmt]
    return px if order == (0, 1, 2, 3) else px[:, :, list(order)]


def make_edid(width: int, height: int) -> bytes:
    """A 128-byte EDID 1.4 block whose preferred (first detailed) timing is width x height at 60 Hz."""
    e = bytearray(128)
    e[0:8] = b"\x00\xff\xff\xff\xff\xff\xff\x00"
    e[8:10] = (((ord("P") - 64) << 10) | ((ord("V") - 64) << 5) | (ord("M") - 64)).to_bytes(2, "big")
    e[10:12] = (1).to_bytes(2, "little")  # product
    e[16] = 1  # week
    e[17] = 2024 - 1990
    e[18], e[19] = 1, 4  # EDID 1.4
    e[20] = 0xA5  # digital, 8 bits per colour, DisplayPort
    e[21], e[22] = width * 254 // 9600 // 10 or 1, height * 254 // 9600 // 10 or 1  # size in cm at 96 dpi
    e[23] = 120  # gamma 2.2
    e[24] = 0x06  # RGB colour, preferred timing mode
    e[35:38] = b"\x00\x00\x00"  # no established timings
    e[38:54] = b"\x01\x01" * 8  # no standard timings
    hblank, vblank = 160, 30
    clock = (width + hblank) * (height + vblank) * 60 // 10_000  # in 10 kHz units
    d = bytearray(18)
    d[0:2] = min(clock, 0xFFFF).to_bytes(2, "little")
    d[2], d[3] = width & 0xFF, hblank & 0xFF
    d[4] = ((width >> 8) & 0xF) << 4 | ((hblank >> 8) & 0xF)
    d[5], d[6] = height & 0xFF, vblank & 0xFF
    d[7] = ((height >> 8) & 0xF) << 4 | ((vblank >> 8) & 0xF)
    d[8], d[9], d[10], d[11] = 48, 32, (3 << 4) | 5, 0
    d[17] = 0x1E  # digital separate sync, both positive
    e[54:72] = d
    name = b"\x00\x00\x00\xfc\x00" + b"pocketvm\n".ljust(13, b" ")
    e[72:90] = name
    e[90:108] = b"\x00\x00\x00\x10\x00" + bytes(13)  # dummy descriptors
    e[108:126] = b"\x00\x00\x00\x10\x00" + bytes(13)
    e[126] = 0  # no extensions
    e[127] = (-sum(e[:127])) & 0xFF
    return bytes(e)


class VirtioGpu(v.VirtioDevice):
    device_id = ID_GPU
    num_queues = 2
    queue_num_max = 256

    def __init__(self, screen: Screen):
        super().__init__()
        self.screen = screen
        self.width = screen.width  # the mode offered in display info and EDID
        self.height = screen.height
        self.resources: dict[int, Resource] = {}
        self.hostmem = 0
        self.scanout_resource = 0  # resource on scanout 0 (0: disabled)
        self.scanout_rect = Rect(0, 0, 0, 0)
        self.cursor_resource = 0
        self.events_read = 0
        self._scratch: np.ndarray | None = None
        self.stats: dict[str, int] = {"commands": 0, "errors": 0, "flushes": 0}

    # --- transport hooks ------------------------------------------------------------

    def device_features(self) -> int:
        return F_EDID

    def config_bytes(self) -> bytes:
        return _CONFIG.pack(self.events_read, 0, 1, 0)

    def config_write(self, offset: int, data: bytes) -> None:
        if offset == 4 and len(data) == 4:  # events_clear: write-to-clear
            self.events_read &= ~int.from_bytes(data, "little")
            return
        guest_error(log, "virtio-gpu: ignored config write at %#x", offset, level=logging.DEBUG)

    def queue_notify(self, q: int) -> None:
        self.serve_queue(q, self._control if q == CONTROLQ else self._cursor)

    def reset(self) -> None:
        self.resources.clear()
        self.hostmem = 0
        self.scanout_resource = 0
        self.scanout_rect = Rect(0, 0, 0, 0)
        self.cursor_resource = 0
        self.events_read = 0
        self.screen.set_cursor(None, 0, 0)

    # --- requests -------------------------------------------------------------------------

    @property
    def _ram(self) -> GuestRAM:
        assert self.transport is not None
        return self.transport.ram

    def _control(self, chain: Chain) -> int:
        if chain.error:
            return 0  # logged by the queue; nothing can be answered safely
        req = chain.read(self._ram, 0, min(chain.readable_len, 64 + _MEM_ENTRY.size * 4))
        if len(req) < _HDR.size:
            guest_error(log, "virtio-gpu: request of %d bytes, shorter than its header", len(req))
            return self._respond(chain, None, RESP_ERR_UNSPEC)
        ctype, flags, fence, ctx, ring = _HDR.unpack_from(req)
        hdr = (flags & FLAG_FENCE, fence, ctx, ring)
        self.stats["commands"] += 1
        try:
            body = req[_HDR.size :]
            if ctype == CMD_GET_DISPLAY_INFO:
                return self._respond(chain, hdr, RESP_OK_DISPLAY_INFO, self._display_info())
            if ctype == CMD_GET_EDID:
                scanout = self._unpack(_ID_PAD, body)[0]
                if scanout >= 1:
                    raise GpuError(RESP_ERR_INVALID_SCANOUT_ID, f"EDID of scanout {scanout}")
                edid = make_edid(self.width, self.height)
                return self._respond(chain, hdr, RESP_OK_EDID, struct.pack("<II", len(edid), 0) + edid.ljust(1024, b"\0"))
            if ctype == CMD_RESOURCE_CREATE_2D:
                self._create_2d(*self._unpack(_CREATE_2D, body))
            elif ctype == CMD_RESOURCE_UNREF:
                self._unref(self._unpack(_ID_PAD, body)[0])
            elif ctype == CMD_SET_SCANOUT:
                x, y, w, h, scanout, rid = self._unpack(_SET_SCANOUT, body)
                self._set_scanout(Rect(x, y, w, h), scanout, rid)
            elif ctype == CMD_RESOURCE_FLUSH:
                x, y, w, h, rid, _ = self._unpack(_FLUSH, body)
                self._flush(Rect(x, y, w, h), rid)
            elif ctype == CMD_TRANSFER_TO_HOST_2D:
                x, y, w, h, offset, rid, _ = self._unpack(_TRANSFER, body)
                self._transfer(Rect(x, y, w, h), offset, rid)
            elif ctype == CMD_RESOURCE_ATTACH_BACKING:
                rid, count = self._unpack(_ATTACH, body)
                self._attach_backing(chain, rid, count)
            elif ctype == CMD_RESOURCE_DETACH_BACKING:
                self._detach_backing(self._unpack(_ID_PAD, body)[0])
            elif ctype in (CMD_GET_CAPSET_INFO, CMD_GET_CAPSET):
                raise GpuError(RESP_ERR_INVALID_PARAMETER, "no 3D capability sets")
            else:
                raise GpuError(RESP_ERR_UNSPEC, f"unsupported command {ctype:#x}")
        except GpuError as e:
            self.stats["errors"] += 1
            guest_error(log, "virtio-gpu: command %#x refused: %s", ctype, e, level=logging.DEBUG)
            return self._respond(chain, hdr, e.code)
        return self._respond(chain, hdr, RESP_OK_NODATA)

    @staticmethod
    def _unpack(layout: struct.Struct, body: bytes) -> tuple[int, ...]:
        if len(body) < layout.size:
            raise GpuError(RESP_ERR_UNSPEC, "request shorter than its command")
        return layout.unpack_from(body)

    def _respond(self, chain: Chain, hdr: tuple[int, int, int, int] | None, rtype: int, payload: bytes = b"") -> int:
        flags, fence, ctx, ring = hdr if hdr is not None else (0, 0, 0, 0)
        # A fenced request's response carries the fence back (section 5.7.6.7):
        # everything is done synchronously, so it is complete already.
        resp = _HDR.pack(rtype, flags, fence if flags else 0, ctx, ring) + payload
        if chain.writable_len < _HDR.size:
            guest_error(log, "virtio-gpu: no room for a response in the chain")
            return 0
        return chain.write(self._ram, 0, resp)

    def _display_info(self) -> bytes:
        one = _DISPLAY_ONE.pack(0, 0, self.width, self.height, 1, 0)
        return one + bytes(_DISPLAY_ONE.size * (MAX_SCANOUTS - 1))

    def _resource(self, rid: int) -> Resource:
        res = self.resources.get(rid)
        if res is None:
            raise GpuError(RESP_ERR_INVALID_RESOURCE_ID, f"no resource {rid}")
        return res

    def _create_2d(self, rid: int, fmt: int, width: int, height: int) -> None:
        if rid == 0 or rid in self.resources:
            raise GpuError(RESP_ERR_INVALID_RESOURCE_ID, f"resource id {rid} is taken or invalid")
        if fmt not in _TO_BGRX:
            raise GpuError(RESP_ERR_INVALID_PARAMETER, f"unknown format {fmt}")
        if width == 0 or height == 0:
            raise GpuError(RESP_ERR_INVALID_PARAMETER, f"empty resource {width}x{height}")
        size = width * height * BPP  # Python ints: no overflow
        if self.hostmem + size > MAX_HOSTMEM or len(self.resources) >= MAX_RESOURCES:
            raise GpuError(RESP_ERR_OUT_OF_MEMORY, f"{width}x{height} exceeds the resource memory limit")
        self.resources[rid] = Resource(rid, fmt, width, height, np.zeros((height, width * BPP), dtype=np.uint8))
        self.hostmem += size

    def _unref(self, rid: int) -> None:
        res = self._resource(rid)
        del self.resources[rid]
        self.hostmem -= res.width * res.height * BPP
        if self.scanout_resource == rid:
            self.scanout_resource = 0
            self.screen.blank()
        if self.cursor_resource == rid:
            self.cursor_resource = 0

    def _set_scanout(self, r: Rect, scanout: int, rid: int) -> None:
        if scanout >= 1:
            raise GpuError(RESP_ERR_INVALID_SCANOUT_ID, f"no scanout {scanout}")
        if rid == 0:  # disable the scanout
            self.scanout_resource = 0
            self.scanout_rect = Rect(0, 0, 0, 0)
            self.screen.blank()
            return
        res = self._resource(rid)
        if r.empty or r.x + r.w > res.width or r.y + r.h > res.height:
            raise GpuError(RESP_ERR_INVALID_PARAMETER, f"scanout rectangle {r} outside resource {rid}")
        self.scanout_resource = rid
        self.scanout_rect = r
        self.screen.resize(r.w, r.h)
        self._show(res, r)

    def _flush(self, r: Rect, rid: int) -> None:
        res = self._resource(rid)
        if r.x + r.w > res.width or r.y + r.h > res.height:
            raise GpuError(RESP_ERR_INVALID_PARAMETER, f"flush rectangle {r} outside resource {rid}")
        self.stats["flushes"] += 1
        if rid != self.scanout_resource:
            return
        s = self.scanout_rect
        # The part of the flushed rectangle that is on screen, in resource coordinates.
        x0, y0 = max(r.x, s.x), max(r.y, s.y)
        x1, y1 = min(r.x + r.w, s.x + s.w), min(r.y + r.h, s.y + s.h)
        if x0 < x1 and y0 < y1:
            self._show(res, Rect(x0, y0, x1 - x0, y1 - y0))

    def _show(self, res: Resource, r: Rect) -> None:
        """Copy rectangle `r` of `res` (resource coordinates) to the screen."""
        s = self.scanout_rect
        src = res.pixels[r.y : r.y + r.h, r.x * BPP : (r.x + r.w) * BPP]
        self.screen.update(Rect(r.x - s.x, r.y - s.y, r.w, r.h), _bgrx(res.format, src))

    def _transfer(self, r: Rect, offset: int, rid: int) -> None:
        res = self._resource(rid)
        if r.empty:
            return
        if r.x + r.w > res.width or r.y + r.h > res.height:
            raise GpuError(RESP_ERR_INVALID_PARAMETER, f"transfer rectangle {r} outside resource {rid}")
        if not res.backing:
            raise GpuError(RESP_ERR_UNSPEC, f"resource {rid} has no backing")
        row = r.w * BPP
        # The backing holds the rows at `offset`, one stride apart (QEMU's and
        # Linux's reading of section 5.7.6.8).
        end = offset + res.stride * (r.h - 1) + row
        if end > res.backing_len:
            raise GpuError(RESP_ERR_INVALID_PARAMETER, f"transfer reads past the backing of resource {rid}")
        try:
            if r.x == 0 and r.w == res.width:
                # Whole rows (what Linux sends): straight into the resource.
                self._gather(res, offset, res.pixels[r.y : r.y + r.h].reshape(-1))
            else:
                # Via a scratch buffer of whole strides, viewed as rows.
                scratch = self._scratch_buffer(res.stride * r.h)
                self._gather(res, offset, scratch[: end - offset])
                rows = scratch.reshape(r.h, res.stride)[:, :row]
                res.pixels[r.y : r.y + r.h, r.x * BPP : r.x * BPP + row] = rows
        except GuestMemoryError:
            raise GpuError(RESP_ERR_UNSPEC, f"backing of resource {rid} outside RAM") from None

    def _scratch_buffer(self, size: int) -> np.ndarray:
        # Kept between transfers: a fresh buffer per transfer costs a page
        # fault per 4 KiB, more than the copy itself. Large ones are not kept.
        if size > SCRATCH_KEEP:
            return np.empty(size, dtype=np.uint8)
        if self._scratch is None or len(self._scratch) < size:
            self._scratch = np.empty(max(size, 1 << 20), dtype=np.uint8)
        return self._scratch[:size]

    def _gather(self, res: Resource, start: int, out: np.ndarray) -> None:
        """Copy bytes [start, start+len(out)) of the backing into `out`."""
        assert res.backing_ends is not None
        length = len(out)
        ram = self._ram
        if res.backing_pages is not None and start % PAGE == 0 and length % PAGE == 0:
            # Whole pages: one gather of RAM's rows of 4 KiB (their numbers
            # were checked to be inside RAM when the backing was attached).
            pages = res.backing_pages[start // PAGE : (start + length) // PAGE]
            np.take(ram.u8.reshape(-1, PAGE), pages, axis=0, out=out.reshape(-1, PAGE), mode="clip")
            return
        i = int(np.searchsorted(res.backing_ends, start, side="right"))
        pos = start
        done = 0
        while done < length:
            seg_start = int(res.backing_ends[i - 1]) if i else 0
            addr, seg_len = res.backing[i]
            skip = pos - seg_start
            n = min(seg_len - skip, length - done)
            out[done : done + n] = ram.view(addr + skip, n)
            done += n
            pos += n
            i += 1

    def _attach_backing(self, chain: Chain, rid: int, count: int) -> None:
        res = self._resource(rid)
        if res.backing:
            raise GpuError(RESP_ERR_UNSPEC, f"resource {rid} already has a backing")
        if count == 0 or count > MAX_BACKING_ENTRIES:
            raise GpuError(RESP_ERR_INVALID_PARAMETER, f"{count} backing entries")
        start = _HDR.size + _ATTACH.size
        raw = chain.read(self._ram, start, count * _MEM_ENTRY.size)
        if len(raw) < count * _MEM_ENTRY.size:
            raise GpuError(RESP_ERR_UNSPEC, "backing entries missing from the request")
        entries = np.frombuffer(raw, dtype=np.dtype([("addr", "<u8"), ("len", "<u4"), ("pad", "<u4")]))
        addrs = entries["addr"].astype(object)
        lens = entries["len"].astype(np.int64)
        ram = self._ram
        backing = []
        for addr, n in zip(addrs.tolist(), lens.tolist()):
            if not ram.contains(addr, n):
                raise GpuError(RESP_ERR_UNSPEC, f"backing page {addr:#x}+{n:#x} outside RAM")
            if n:
                backing.append((addr, n))
        if not backing:
            raise GpuError(RESP_ERR_INVALID_PARAMETER, "empty backing")
        res.set_backing(backing, ram.base)

    def _detach_backing(self, rid: int) -> None:
        self._resource(rid).clear_backing()

    # --- cursor queue ------------------------------------------------------------------

    def _cursor(self, chain: Chain) -> int:
        if chain.error:
            return 0
        req = chain.read(self._ram, 0, _HDR.size + _CURSOR.size)
        if len(req) < _HDR.size + _CURSOR.size:
            guest_error(log, "virtio-gpu: short cursor request")
            return 0
        ctype = _HDR.unpack_from(req)[0]
        scanout, x, y, _, rid, hot_x, hot_y, _ = _CURSOR.unpack_from(req, _HDR.size)
        if scanout != 0:
            guest_error(log, "virtio-gpu: cursor on scanout %d", scanout, level=logging.DEBUG)
            return 0
        if ctype == CMD_UPDATE_CURSOR:
            self._update_cursor(rid, hot_x, hot_y)
        elif ctype != CMD_MOVE_CURSOR:
            guest_error(log, "virtio-gpu: unknown cursor command %#x", ctype)
            return 0
        self.screen.move_cursor(x, y)
        return 0  # the cursor queue has no responses

    def _update_cursor(self, rid: int, hot_x: int, hot_y: int) -> None:
        if rid == 0:
            self.cursor_resource = 0
            self.screen.set_cursor(None, 0, 0)
            return
        res = self.resources.get(rid)
        if res is None or res.width > 256 or res.height > 256:
            guest_error(log, "virtio-gpu: cursor resource %d is missing or too large", rid, level=logging.DEBUG)
            return
        self.cursor_resource = rid
        image = _bgrx(res.format, res.pixels).copy()  # the 4th byte is alpha for cursor formats
        self.screen.set_cursor(image, min(hot_x, res.width - 1), min(hot_y, res.height - 1))

    # --- display events ------------------------------------------------------------------

    def set_preferred_size(self, width: int, height: int) -> None:
        """Offer a new mode; the driver asks for display info again."""
        self.width, self.height = width, height
        self.events_read |= EVENT_DISPLAY
        if self.transport is not None:
            self.transport.config_changed()

    # --- snapshots -----------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        resources = []
        for res in self.resources.values():
            resources.append({
                "id": res.id, "format": res.format, "width": res.width, "height": res.height,
                "pixels": zlib.compress(res.pixels.tobytes(), 1),
                "backing": [[a, n] for a, n in res.backing],
            })  # fmt: skip
        s = self.scanout_rect
        return {
            "mode": [self.width, self.height],
            "resources": resources,
            "scanout": {"resource": self.scanout_resource, "rect": [s.x, s.y, s.w, s.h]},
            "cursor_resource": self.cursor_resource,
            "events_read": self.events_read,
            "screen": self.screen.save(),
            "stats": dict(self.stats),
        }

    def load(self, state: dict[str, Any]) -> None:
        # A snapshot is checked like a guest request: it may have been edited.
        self.resources.clear()
        self.hostmem = 0
        self.width, self.height = (int(n) for n in state["mode"])
        for r in state["resources"]:
            rid, fmt, w, h = int(r["id"]), int(r["format"]), int(r["width"]), int(r["height"])
            try:
                self._create_2d(rid, fmt, w, h)
            except GpuError as e:
                raise ValueError(f"resource {rid}: {e}") from None
            res = self.resources[rid]
            res.pixels[:] = np.frombuffer(inflate_exact(r["pixels"], w * h * BPP), dtype=np.uint8).reshape(h, w * BPP)
            backing = [(int(a), int(n)) for a, n in r["backing"]]
            if len(backing) > MAX_BACKING_ENTRIES or not all(self._ram.contains(a, n) and n > 0 for a, n in backing):
                raise ValueError(f"resource {rid}: backing outside RAM")
            if backing:
                res.set_backing(backing, self._ram.base)
        sc = state["scanout"]
        rid = int(sc["resource"])
        x, y, w, h = (int(n) for n in sc["rect"])
        if rid and (rid not in self.resources or x + w > self.resources[rid].width or y + h > self.resources[rid].height):
            raise ValueError("scanout shows a missing resource")
        self.scanout_resource = rid
        self.scanout_rect = Rect(x, y, w, h)
        self.cursor_resource = int(state.get("cursor_resource", 0))
        self.events_read = int(state.get("events_read", 0)) & EVENT_DISPLAY
        self.screen.load(state["screen"])
        for name, count in state.get("stats", {}).items():
            if name in self.stats:
                self.stats[name] = int(count)
