"""The user-mode network's packet helpers, checked against the test guest's own implementation."""

from __future__ import annotations

import random

from net_user_guest import csum

from pocketvm.backends.netstack import checksum, ipv4, tcp


def test_checksum_matches_a_word_by_word_sum():
    rng = random.Random(7)
    cases = [b"", b"\0", b"\0\0", b"\xff\xff", b"\xff" * 7, bytes(64)]
    cases += [rng.randbytes(rng.randrange(0, 1600)) for _ in range(300)]
    for data in cases:
        assert checksum.checksum(data) == csum(data), data.hex()
        field = checksum.checksum(data).to_bytes(2, "big")
        if len(data) % 2 == 0:
            assert checksum.valid(data + field)


def test_fragments_reassemble_to_the_payload():
    payload = random.Random(8).randbytes(5000)
    src, dst = bytes((10, 0, 2, 2)), bytes((10, 0, 2, 15))
    packets = ipv4.fragments(src, dst, ipv4.PROTO_UDP, payload, 77, 1500)
    assert len(packets) == 4 and all(len(p) <= 1500 for p in packets)
    assert all(ipv4.parse(p) is None for p in packets)  # fragments are not taken from the guest
    pieces = {}
    for p in packets:
        assert csum(p[:20]) == 0
        frag = int.from_bytes(p[6:8], "big")
        pieces[(frag & 0x1FFF) * 8] = p[20:]
    assert b"".join(pieces[k] for k in sorted(pieces)) == payload
    assert ipv4.fragments(src, dst, ipv4.PROTO_UDP, b"x" * 1480, 1, 1500)[0][20:] == b"x" * 1480


def test_mss_option_parsing_survives_any_options():
    src, dst = bytes(4), bytes(4)
    seg = tcp.build(src, dst, 1, 2, 3, 4, tcp.SYN, 100, mss=1200)
    assert tcp.parse(src, dst, seg).mss == 1200
    rng = random.Random(9)
    for _ in range(2000):
        options = rng.randbytes(rng.choice([4, 8, 20, 40]))
        header = bytearray(tcp.build(src, dst, 1, 2, 3, 4, tcp.ACK, 100))
        header[12] = (5 + len(options) // 4) << 4
        data = bytes(header[:16]) + b"\0\0" + bytes(header[18:]) + options
        data = data[:16] + checksum.checksum(checksum.pseudo_header(src, dst, 6, len(data)), data).to_bytes(2, "big") + data[18:]
        seg = tcp.parse(src, dst, data)
        assert seg is not None and (seg.mss is None or 0 <= seg.mss <= 0xFFFF)


def test_sequence_arithmetic_wraps():
    assert tcp.seq_add(0xFFFFFFFF, 2) == 1
    assert tcp.seq_diff(1, 0xFFFFFFFF) == 2
    assert tcp.seq_diff(0xFFFFFFFF, 1) == -2
