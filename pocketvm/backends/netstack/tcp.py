"""TCP segments (RFC 9293): header, MSS option, checksum, sequence arithmetic."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pocketvm.backends.netstack import checksum
from pocketvm.backends.netstack.ipv4 import PROTO_TCP

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10

HEADER_LEN = 20
_HEADER = struct.Struct("!HHIIBBHHH")
_OPT_END = 0
_OPT_NOP = 1
_OPT_MSS = 2


@dataclass(frozen=True, slots=True)
class Segment:
    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes
    mss: int | None  # the MSS option, if the segment carries one

    @property
    def seq_len(self) -> int:
        """Sequence space the segment occupies: its data, plus one each for SYN and FIN."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)


def parse(src: bytes, dst: bytes, data: bytes) -> Segment | None:
    if len(data) < HEADER_LEN:
        return None
    sport, dport, seq, ack, offset, flags, window, _csum, _urg = _HEADER.unpack_from(data)
    header_len = (offset >> 4) * 4
    if header_len < HEADER_LEN or header_len > len(data):
        return None
    if not checksum.valid(checksum.pseudo_header(src, dst, PROTO_TCP, len(data)), data):
        return None
    return Segment(sport, dport, seq, ack, flags, window, data[header_len:], _mss_option(data[HEADER_LEN:header_len]))


def _mss_option(options: bytes) -> int | None:
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == _OPT_END:
            break
        if kind == _OPT_NOP:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            return None
        length = options[i + 1]
        if kind == _OPT_MSS and length == 4 and i + 4 <= len(options):
            return int.from_bytes(options[i + 2 : i + 4], "big")
        i += length
    return None


def build(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: bytes = b"",
    mss: int | None = None,
) -> bytes:
    options = b"" if mss is None else bytes((_OPT_MSS, 4)) + mss.to_bytes(2, "big")
    header_len = HEADER_LEN + len(options)
    header = _HEADER.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (header_len // 4) << 4, flags, window, 0, 0)
    header += options
    pseudo = checksum.pseudo_header(src, dst, PROTO_TCP, header_len + len(payload))
    csum = checksum.checksum(pseudo, header, payload)
    return header[:16] + csum.to_bytes(2, "big") + header[18:] + payload


def seq_add(a: int, n: int) -> int:
    return (a + n) & 0xFFFFFFFF


def seq_diff(a: int, b: int) -> int:
    """a - b in sequence space, as a signed number (valid within 2**31)."""
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d & 0x80000000 else d
