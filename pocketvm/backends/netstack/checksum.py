"""The Internet checksum (RFC 1071), for IPv4 headers, ICMP, UDP and TCP."""

from __future__ import annotations


def ones_sum(*parts: bytes) -> int:
    """One's complement sum of the 16-bit big-endian words of the parts.

    Every part but the last must have an even length (the pseudo-header
    and headers always do); an odd last part is padded with a zero byte.
    """
    total = 0
    for part in parts:
        value = int.from_bytes(part, "big")
        if len(part) & 1:
            value <<= 8
        total += value
    # 2**16 is 1 modulo 0xFFFF, so the whole part read as one big number is
    # congruent to the sum of its words: one C-speed modulo instead of a
    # Python loop over the words.
    folded = total % 0xFFFF
    # End-around-carry addition only gives 0 when every word is 0.
    if folded == 0 and total != 0:
        return 0xFFFF
    return folded


def checksum(*parts: bytes) -> int:
    """The value for a checksum field that is zero within the parts."""
    return ~ones_sum(*parts) & 0xFFFF


def valid(*parts: bytes) -> bool:
    """True if the parts, checksum field included, sum correctly."""
    return ones_sum(*parts) == 0xFFFF


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """The IPv4 pseudo-header that UDP and TCP checksums cover."""
    return src + dst + bytes((0, proto)) + length.to_bytes(2, "big")
