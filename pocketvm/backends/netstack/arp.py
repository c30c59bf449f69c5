"""ARP for IPv4 over Ethernet (RFC 826)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

REQUEST = 1
REPLY = 2

_ARP = struct.Struct("!HHBBH6s4s6s4s")


@dataclass(frozen=True, slots=True)
class Arp:
    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes


def parse(data: bytes) -> Arp | None:
    if len(data) < _ARP.size:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(data)
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
        return None
    return Arp(op, sha, spa, tha, tpa)


def build(op: int, sender_mac: bytes, sender_ip: bytes, target_mac: bytes, target_ip: bytes) -> bytes:
    return _ARP.pack(1, 0x0800, 6, 4, op, sender_mac, sender_ip, target_mac, target_ip)
