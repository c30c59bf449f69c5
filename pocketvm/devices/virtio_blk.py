"""virtio-blk (VIRTIO 1.2 section 5.2) on a raw disk image.

A request is a descriptor chain: a 16-byte header (type, reserved, sector)
in device-readable memory, then data (readable for writes, writable for
reads) and finally one writable status byte. No assumption is made about
how the guest splits that stream into descriptors. Data moves between the
image and guest RAM with one preadv/pwritev over views of guest memory.

Every guest mistake ends as a status byte (IOERR or UNSUPP) when the chain
has somewhere to put one; requests are completed in order, synchronously.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from pocketvm.backends.disk import SECTOR_SIZE, DiskError, DiskImage
from pocketvm.devices import virtio as v
from pocketvm.devices.guestlog import guest_error
from pocketvm.devices.virtqueue import Chain
from pocketvm.memory import GuestRAM

log = logging.getLogger(__name__)

# feature bits
F_SIZE_MAX = 1 << 1
F_SEG_MAX = 1 << 2
F_RO = 1 << 5
F_BLK_SIZE = 1 << 6
F_FLUSH = 1 << 9
F_DISCARD = 1 << 13
F_WRITE_ZEROES = 1 << 14

# request types
T_IN = 0
T_OUT = 1
T_FLUSH = 4
T_GET_ID = 8
T_DISCARD = 11
T_WRITE_ZEROES = 13

# status values
S_OK = 0
S_IOERR = 1
S_UNSUPP = 2

ID_BYTES = 20
FLAG_UNMAP = 1

QUEUE_SIZE = 256
SIZE_MAX = 1 << 20  # largest single data segment we advertise
MAX_DISCARD_SECTORS = 1 << 22  # 2 GiB per discard / write-zeroes segment
MAX_DISCARD_SEG = 1  # one range per request, as QEMU
DISCARD_ALIGNMENT = 8  # sectors (4 KiB, the granularity of a punched hole)

_HEADER = struct.Struct("<IIQ")
_RANGE = struct.Struct("<QII")  # sector, num_sectors, flags

# Layout of struct virtio_blk_config up to write_zeroes_may_unmap (60 bytes):
# capacity, size_max, seg_max, geometry (c/h/s), blk_size, topology
# (physical_block_exp, alignment_offset, min_io_size, opt_io_size), writeback,
# unused0, num_queues, max_discard_sectors, max_discard_seg,
# discard_sector_alignment, max_write_zeroes_sectors, max_write_zeroes_seg,
# write_zeroes_may_unmap, unused1[3].
_CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")


class _RequestError(Exception):
    """Ends a request with the given status (internal to this module)."""

    def __init__(self, status: int, msg: str):
        super().__init__(msg)
        self.status = status


class VirtioBlk(v.VirtioDevice):
    device_id = v.ID_BLOCK
    num_queues = 1
    queue_num_max = QUEUE_SIZE

    def __init__(self, disk: DiskImage, serial: str = "pocketvm"):
        super().__init__()
        self.disk = disk
        self.serial = serial.encode("utf-8", "replace")[:ID_BYTES]
        self.seg_max = QUEUE_SIZE - 2  # header and status take a descriptor each

    def device_features(self) -> int:
        features = F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH
        if self.disk.readonly:
            features |= F_RO
        else:
            features |= F_WRITE_ZEROES
            if self.disk.supports_discard:
                features |= F_DISCARD
        return features

    def config_bytes(self) -> bytes:
        may_unmap = int(self.disk.supports_discard and not self.disk.readonly)
        return _CONFIG.pack(
            self.disk.sectors,  # capacity
            SIZE_MAX,
            self.seg_max,
            0, 0, 0,  # geometry: unused
            SECTOR_SIZE,  # blk_size
            0, 0, 0, 0,  # topology: unused
            0, 0,  # writeback, unused0
            1,  # num_queues
            MAX_DISCARD_SECTORS,
            MAX_DISCARD_SEG,
            DISCARD_ALIGNMENT,
            MAX_DISCARD_SECTORS,  # max_write_zeroes_sectors
            MAX_DISCARD_SEG,  # max_write_zeroes_seg
            may_unmap,
        )

    def config_write(self, offset: int, data: bytes) -> None:
        # Only `writeback` is ever writable, and only with CONFIG_WCE, not offered.
        guest_error(log, "virtio-blk: ignored config write at %#x", offset, level=logging.DEBUG)

    # --- requests -------------------------------------------------------------------

    def queue_notify(self, q: int) -> None:
        self.serve_queue(q, self._handle)

    def _handle(self, chain: Chain) -> int:
        """Carry out one request; returns the byte count for the used ring."""
        assert self.transport is not None
        ram = self.transport.ram
        in_len = chain.writable_len
        if in_len == 0:
            guest_error(log, "virtio-blk: request without a status byte dropped")
            return 0
        data_in = in_len - 1  # writable bytes before the status byte
        if chain.error:  # already logged by the queue
            chain.write(ram, data_in, bytes((S_IOERR,)))
            return 1
        written = 1
        try:
            header = chain.read(ram, 0, _HEADER.size)
            if len(header) < _HEADER.size:
                raise _RequestError(S_IOERR, "request header too short")
            rtype, _, sector = _HEADER.unpack(header)
            data_out = chain.readable_len - _HEADER.size
            if rtype == T_IN:
                self._check_rw(sector, data_in)
                self.disk.readinto(sector * SECTOR_SIZE, chain.writable_views(ram, 0, data_in))
                written += data_in
            elif rtype == T_OUT:
                if self.disk.readonly:
                    raise _RequestError(S_IOERR, "write to a read-only disk")
                self._check_rw(sector, data_out)
                self.disk.writefrom(sector * SECTOR_SIZE, chain.readable_views(ram, _HEADER.size, data_out))
            elif rtype == T_FLUSH:
                self.disk.flush()
            elif rtype == T_GET_ID:
                n = min(data_in, ID_BYTES)
                written += chain.write(ram, 0, self.serial.ljust(ID_BYTES, b"\0")[:n])
            elif rtype in (T_DISCARD, T_WRITE_ZEROES):
                self._discard_or_zero(rtype, ram, chain, data_out)
            else:
                raise _RequestError(S_UNSUPP, f"unsupported request type {rtype}")
            status = S_OK
        except _RequestError as e:
            guest_error(log, "virtio-blk: %s", e)
            status = e.status
        except DiskError as e:
            log.error("virtio-blk: %s", e)
            status = S_IOERR
        chain.write(ram, data_in, bytes((status,)))
        return written

    def _check_rw(self, sector: int, length: int) -> None:
        if length % SECTOR_SIZE:
            raise _RequestError(S_IOERR, f"data length {length} is not a multiple of {SECTOR_SIZE}")
        if sector * SECTOR_SIZE + length > self.disk.size:
            raise _RequestError(S_IOERR, f"sectors {sector}+{length // SECTOR_SIZE} beyond capacity {self.disk.sectors}")

    def _discard_or_zero(self, rtype: int, ram: GuestRAM, chain: Chain, length: int) -> None:
        """`length` bytes of ranges follow the header in `chain`."""
        discard = rtype == T_DISCARD
        if self.disk.readonly:
            raise _RequestError(S_IOERR, "discard or write-zeroes on a read-only disk")
        if discard and not self.disk.supports_discard:
            raise _RequestError(S_UNSUPP, "discard not supported by this image")
        # Checked before anything is copied: descriptors may all alias the
        # same RAM, so a chain can claim far more bytes than the host has.
        if not length or length % _RANGE.size:
            raise _RequestError(S_IOERR, f"bad discard/write-zeroes payload of {length} bytes")
        if length // _RANGE.size > MAX_DISCARD_SEG:
            raise _RequestError(S_UNSUPP, "too many discard/write-zeroes segments")
        payload = chain.read(ram, _HEADER.size, length)
        ranges = [_RANGE.unpack_from(payload, i) for i in range(0, len(payload), _RANGE.size)]
        for sector, count, flags in ranges:
            if flags & ~FLAG_UNMAP or (discard and flags & FLAG_UNMAP):
                raise _RequestError(S_UNSUPP, f"unsupported flags {flags:#x}")
            if count > MAX_DISCARD_SECTORS:
                raise _RequestError(S_IOERR, f"{count} sectors exceeds the per-request limit")
            self._check_rw(sector, count * SECTOR_SIZE)
        for sector, count, flags in ranges:
            offset, length = sector * SECTOR_SIZE, count * SECTOR_SIZE
            if discard:
                self.disk.discard(offset, length)
            else:
                self.disk.write_zeroes(offset, length, unmap=bool(flags & FLAG_UNMAP))

    def save(self) -> dict[str, Any]:
        # Requests complete synchronously, so nothing is ever in flight.
        return {}
