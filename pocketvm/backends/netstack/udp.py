"""UDP datagrams (RFC 768) with their pseudo-header checksum."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pocketvm.backends.netstack import checksum
from pocketvm.backends.netstack.ipv4 import PROTO_UDP

HEADER_LEN = 8
_HEADER = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class Datagram:
    src_port: int
    dst_port: int
    payload: bytes


def parse(src: bytes, dst: bytes, data: bytes) -> Datagram | None:
    if len(data) < HEADER_LEN:
        return None
    sport, dport, length, csum = _HEADER.unpack_from(data)
    if length < HEADER_LEN or length > len(data):
        return None
    data = data[:length]
    # A zero checksum means the sender did not compute one (allowed over IPv4).
    if csum and not checksum.valid(checksum.pseudo_header(src, dst, PROTO_UDP, length), data):
        return None
    return Datagram(sport, dport, data[HEADER_LEN:])


def build(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    length = HEADER_LEN + len(payload)
    header = _HEADER.pack(sport, dport, length, 0)
    csum = checksum.checksum(checksum.pseudo_header(src, dst, PROTO_UDP, length), header, payload)
    # 0 would read as "no checksum"; its one's complement twin says the same sum.
    return _HEADER.pack(sport, dport, length, csum or 0xFFFF) + payload
