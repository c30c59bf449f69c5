"""IPv4 packets (RFC 791): header checks, building, and fragmenting for the guest.

Fragments from the guest are refused (parse returns None): reassembly would
let a guest make the host hold partial packets, and a guest with a normal
MTU never sends them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pocketvm.backends.netstack import checksum

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

HEADER_LEN = 20
_HEADER = struct.Struct("!BBHHHBBH4s4s")
_MF = 0x2000


@dataclass(frozen=True, slots=True)
class Packet:
    src: bytes
    dst: bytes
    proto: int
    payload: bytes


def parse(data: bytes) -> Packet | None:
    if len(data) < HEADER_LEN or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    total = int.from_bytes(data[2:4], "big")
    if ihl < HEADER_LEN or total < ihl or total > len(data):
        return None
    if int.from_bytes(data[6:8], "big") & (_MF | 0x1FFF):
        return None
    if not checksum.valid(data[:ihl]):
        return None
    # Slicing at the total length drops the Ethernet padding of short frames.
    return Packet(data[12:16], data[16:20], data[9], data[ihl:total])


def build(src: bytes, dst: bytes, proto: int, payload: bytes, ident: int, ttl: int = 64) -> bytes:
    return _header(src, dst, proto, HEADER_LEN + len(payload), ident, 0, ttl) + payload


def fragments(src: bytes, dst: bytes, proto: int, payload: bytes, ident: int, mtu: int) -> list[bytes]:
    """The payload as one packet, or as fragments of at most mtu bytes each."""
    if HEADER_LEN + len(payload) <= mtu:
        return [build(src, dst, proto, payload, ident)]
    step = (mtu - HEADER_LEN) // 8 * 8
    packets = []
    for offset in range(0, len(payload), step):
        chunk = payload[offset : offset + step]
        more = _MF if offset + step < len(payload) else 0
        packets.append(_header(src, dst, proto, HEADER_LEN + len(chunk), ident, more | offset // 8, 64) + chunk)
    return packets


def _header(src: bytes, dst: bytes, proto: int, total: int, ident: int, frag: int, ttl: int) -> bytes:
    header = _HEADER.pack(0x45, 0, total, ident & 0xFFFF, frag, ttl, proto, 0, src, dst)
    return header[:10] + checksum.checksum(header).to_bytes(2, "big") + header[12:]
