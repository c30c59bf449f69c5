"""The content digest of sparse files, and the manifest format."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pocketvm.snapshot import format as F
from pocketvm.snapshot.digest import BLOCK, ContentDigest, data_extents, digest_file, nonzero_runs


def _naive_runs(data: bytes) -> list[tuple[int, int]]:
    nz = [any(data[i : i + BLOCK]) for i in range(0, len(data), BLOCK)]
    runs, start = [], None
    for i, v in enumerate(nz + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_nonzero_runs_match_a_naive_scan():
    rng = np.random.default_rng(7)
    data = np.zeros(64 * BLOCK, dtype=np.uint8)
    for block in rng.choice(64, 20, replace=False):
        data[block * BLOCK + int(rng.integers(BLOCK))] = 1 + int(rng.integers(255))
    data[63 * BLOCK + BLOCK - 1] = 9  # last byte of the last block
    assert nonzero_runs(data) == _naive_runs(data.tobytes())
    assert nonzero_runs(np.zeros(4 * BLOCK, dtype=np.uint8)) == []


def _write_sparse(path, size: int, pieces: dict[int, bytes]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in pieces.items():
            f.seek(off)
            f.write(data)


def test_digest_depends_on_content_not_on_allocation(tmp_path):
    size = 1 << 20
    pieces = {0: b"boot", 5 * BLOCK: b"x" * (2 * BLOCK), 200 * BLOCK + 17: b"tail"}
    sparse, dense = tmp_path / "sparse", tmp_path / "dense"
    _write_sparse(sparse, size, pieces)
    buf = bytearray(size)
    for off, data in pieces.items():
        buf[off : off + len(data)] = data
    dense.write_bytes(bytes(buf))  # every block allocated, zero ones included
    assert digest_file(sparse) == digest_file(dense)
    # The same digest as feeding the whole buffer at once.
    d = ContentDigest()
    d.update(0, np.frombuffer(bytes(buf), dtype=np.uint8))
    assert digest_file(sparse)[0] == d.hexdigest()


def test_digest_sees_any_change_even_in_a_hole(tmp_path):
    size = 256 * BLOCK
    path = tmp_path / "f"
    _write_sparse(path, size, {BLOCK: b"data"})
    before = digest_file(path)[0]
    # A non-zero byte where the file had a hole.
    with open(path, "r+b") as f:
        f.seek(100 * BLOCK + 5)
        f.write(b"\x01")
    assert digest_file(path)[0] != before
    # Moving data to another block changes it too (positions are hashed).
    _write_sparse(tmp_path / "g", size, {2 * BLOCK: b"data"})
    assert digest_file(tmp_path / "g")[0] != before


def test_digest_of_a_partial_last_block_and_empty_file(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"hello" * 1000)  # 5000 bytes: one full block and a partial one
    b.write_bytes(b"hello" * 1000 + b"\0")
    assert digest_file(a)[0] == digest_file(b)[0]  # zero padding, by definition
    assert digest_file(a)[1] == 5000 and digest_file(b)[1] == 5001  # sizes are what tells them apart
    c = tmp_path / "c"
    c.write_bytes(b"hello" * 999 + b"hellp")
    assert digest_file(c)[0] != digest_file(a)[0]
    (tmp_path / "e").write_bytes(b"")
    assert digest_file(tmp_path / "e")[1] == 0


def test_data_extents_skip_holes(tmp_path):
    path = tmp_path / "f"
    _write_sparse(path, 1024 * BLOCK, {10 * BLOCK: b"a", 500 * BLOCK: b"b"})
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = data_extents(fd, 1024 * BLOCK)
    finally:
        os.close(fd)
    covered = sum(e - s for s, e in extents)
    assert any(s <= 10 * BLOCK < e for s, e in extents)
    assert any(s <= 500 * BLOCK < e for s, e in extents)
    assert covered < 1024 * BLOCK  # holes were reported (ext4, tmpfs, xfs, btrfs all do)


def _manifest(**over) -> F.Manifest:
    m = F.Manifest(
        version=F.VERSION,
        created="now",
        vm={"memory": 1 << 24, "cpus": 1, "append": "", "rng": False, "deterministic": True,
            "kernel": "k", "initrd": None, "bios": None, "name": "x"},
        harts=1,
        state_size=10,
        shared_size=2,
        ram_size=1 << 24,
        disks=[],
        files={n: F.FileEntry(1 << 24 if n == F.RAM_FILE else 1, "d") for n in (F.CPU_FILE, F.STATE_FILE, F.RAM_FILE)},
    )
    for k, v in over.items():
        setattr(m, k, v)
    return m


def test_manifest_round_trip_and_self_checksum():
    data = _manifest().to_json()
    m = F.parse_manifest(data, "here")
    assert m.ram_size == 1 << 24 and m.files[F.RAM_FILE].digest == "d"
    obj = json.loads(data)
    obj["vm"]["append"] = "init=/bin/evil"
    with pytest.raises(F.SnapshotError, match="manifest.json checksum mismatch"):
        F.parse_manifest(json.dumps(obj).encode(), "here")


def test_manifest_rejects_other_versions_and_unsafe_names():
    obj = json.loads(_manifest().to_json())
    obj["version"] = 2
    obj["checksum"] = F.manifest_checksum(obj)
    with pytest.raises(F.SnapshotError, match="format version 2 is not supported.*newer"):
        F.parse_manifest(json.dumps(obj).encode(), "here")
    m = _manifest(disks=[F.DiskEntry("../../etc/passwd", False, "")])
    m.files["../../etc/passwd"] = F.FileEntry(1, "d")
    with pytest.raises(F.SnapshotError, match="not allowed"):
        F.parse_manifest(m.to_json(), "here")
    with pytest.raises(F.SnapshotError, match="not valid JSON"):
        F.parse_manifest(_manifest().to_json()[:50], "here")


def test_device_state_keeps_bytes():
    state = {"uart": {"rx": b"\x00abc\xff", "ier": 5}, "list": [b"", 1, None]}
    assert F.load_state(F.dump_state(state)) == state
