"""Ethernet II frames (no FCS: virtio-net carries frames without it)."""

from __future__ import annotations

from dataclasses import dataclass

HEADER_LEN = 14
# Shorter frames are padded, as a real NIC would, so no guest driver sees a runt.
MIN_FRAME = 60
BROADCAST = b"\xff" * 6

TYPE_IPV4 = 0x0800
TYPE_ARP = 0x0806


@dataclass(frozen=True, slots=True)
class Frame:
    dst: bytes
    src: bytes
    ethertype: int
    payload: bytes


def parse(frame: bytes) -> Frame | None:
    if len(frame) < HEADER_LEN:
        return None
    return Frame(frame[0:6], frame[6:12], int.from_bytes(frame[12:14], "big"), frame[HEADER_LEN:])


def build(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    frame = dst + src + ethertype.to_bytes(2, "big") + payload
    if len(frame) < MIN_FRAME:
        frame += bytes(MIN_FRAME - len(frame))
    return frame


def is_multicast(mac: bytes) -> bool:
    """True for group addresses (broadcast included): never a sender's address."""
    return bool(mac[0] & 1)
