"""The content digest of sparse files, and the manifest format."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np
import pytest
import xxhash

from pocketvm.snapshot import format as F
from pocketvm.snapshot import workdisks
from pocketvm.snapshot.digest import (
    ALGORITHM,
    BLOCK,
    ContentDigest,
    algorithm_of,
    data_extents,
    digest_file,
    nonzero_runs,
)
from pocketvm.snapshot.restore import open_snapshot


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


# Runs: blocks 1-2, block 40, and the partial block 64 (zero-padded).
_GOLDEN_SIZE = 64 * BLOCK + 100
_GOLDEN_PIECES = {BLOCK: bytes(range(256)) * 32, 40 * BLOCK + 7: b"pocketvm", 64 * BLOCK + 99: b"!"}
# Written by the sha256-only pocketvm: snapshots it saved must keep verifying.
_GOLDEN_SHA256 = "sha256-nz4k:d9e921080207bc5c710139b423012e5d3b69373cf3c1e58e79b99f2959ca7ddd"


def _golden_stream() -> bytes:
    """What the module docstring says is hashed, built the slow obvious way."""
    buf = bytearray(65 * BLOCK)
    for off, data in _GOLDEN_PIECES.items():
        buf[off : off + len(data)] = data
    stream = b""
    for first, count in ((1, 2), (40, 1), (64, 1)):
        stream += bytes(buf[first * BLOCK : (first + count) * BLOCK]) + struct.pack("<QQ", first, count)
    return stream


def test_new_digests_are_xxh3_of_the_documented_stream(tmp_path):
    path = tmp_path / "g"
    _write_sparse(path, _GOLDEN_SIZE, _GOLDEN_PIECES)
    assert ALGORITHM == "xxh3-128-nz4k"
    assert digest_file(path)[0] == "xxh3-128-nz4k:" + xxhash.xxh3_128(_golden_stream()).hexdigest()


def test_old_sha256_digests_are_unchanged(tmp_path):
    path = tmp_path / "g"
    _write_sparse(path, _GOLDEN_SIZE, _GOLDEN_PIECES)
    assert digest_file(path, "sha256-nz4k")[0] == _GOLDEN_SHA256
    assert _GOLDEN_SHA256 == "sha256-nz4k:" + hashlib.sha256(_golden_stream()).hexdigest()
    assert algorithm_of(_GOLDEN_SHA256) == "sha256-nz4k"


@pytest.mark.parametrize("algorithm", ["xxh3-128-nz4k", "sha256-nz4k"])
def test_each_algorithm_is_content_only_and_sees_one_byte(tmp_path, algorithm):
    sparse, dense = tmp_path / "sparse", tmp_path / "dense"
    _write_sparse(sparse, _GOLDEN_SIZE, _GOLDEN_PIECES)
    dense.write_bytes(sparse.read_bytes())  # every block allocated, zero ones included
    before = digest_file(sparse, algorithm)[0]
    assert before.startswith(algorithm + ":")
    assert digest_file(dense, algorithm)[0] == before
    with open(dense, "r+b") as f:
        f.seek(40 * BLOCK + 8)  # the "o" of "pocketvm"
        f.write(b"0")
    assert digest_file(dense, algorithm)[0] != before


def test_unknown_algorithm_is_refused():
    for digest in ("md5-nz4k:00", "sha256:00", "xxh3-128-nz4k", ""):
        with pytest.raises(ValueError, match="checksum of unknown kind"):
            algorithm_of(digest)
    with pytest.raises(ValueError, match="unknown kind 'md5-nz4k'"):
        ContentDigest("md5-nz4k")


def _fake_snapshot(path, algorithm: str, *, ram_digest: str | None = None) -> F.Manifest:
    """A snapshot directory that open_snapshot accepts (it checks files and
    digests, not whether a CPU state is runnable), with a read-only and a
    writable disk so every digest caller is exercised."""
    path.mkdir()
    m = _manifest(disks=[F.DiskEntry("disk0.raw", True, ""), F.DiskEntry("disk1.raw", False, "")])
    (path / F.CPU_FILE).write_bytes(np.arange(m.harts * m.state_size + m.shared_size, dtype="<i8").tobytes())
    (path / F.STATE_FILE).write_bytes(F.dump_state({"mtime": 0, "devices": {}, "virtio_ids": []}))
    _write_sparse(path / F.RAM_FILE, m.ram_size, {0: b"boot", 3 * BLOCK: b"r" * BLOCK, 4000 * BLOCK + 1: b"x"})
    _write_sparse(path / "disk0.raw", 256 * BLOCK, {7 * BLOCK: b"read-only"})
    _write_sparse(path / "disk1.raw", 256 * BLOCK, {9 * BLOCK: b"writable"})
    for name in (F.CPU_FILE, F.STATE_FILE, F.RAM_FILE, "disk0.raw", "disk1.raw"):
        digest, size = digest_file(path / name, algorithm)
        m.files[name] = F.FileEntry(size, digest)
    if ram_digest is not None:
        m.files[F.RAM_FILE].digest = ram_digest
    (path / F.MANIFEST).write_bytes(m.to_json())
    return m


@pytest.mark.parametrize("algorithm", ["xxh3-128-nz4k", "sha256-nz4k"])
def test_snapshot_verifies_with_the_algorithm_its_manifest_names(tmp_path, algorithm):
    _fake_snapshot(tmp_path / "snap", algorithm)
    snap = open_snapshot(tmp_path / "snap")
    try:
        assert snap.manifest.files[F.RAM_FILE].digest.startswith(algorithm + ":")
        work = workdisks.prepare(snap.path, snap.manifest, tmp_path / "work")  # verifies the copy of disk1
        assert [p.name for p in work.copies] == ["disk1.raw"]
        work.discard()
    finally:
        snap.ram.close()
    # Still a real check under either algorithm.
    with open(tmp_path / "snap" / F.RAM_FILE, "r+b") as f:
        f.seek(3 * BLOCK + 5)
        f.write(b"R")
    with pytest.raises(F.SnapshotError, match="ram.raw checksum mismatch"):
        open_snapshot(tmp_path / "snap")


def test_snapshot_with_an_unknown_algorithm_is_refused_in_one_line(tmp_path):
    _fake_snapshot(tmp_path / "snap", ALGORITHM, ram_digest="blake9-nz4k:" + "0" * 64)
    with pytest.raises(F.SnapshotError) as e:
        open_snapshot(tmp_path / "snap")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"snapshot {tmp_path / 'snap'}: ram.raw: checksum of unknown kind 'blake9-nz4k'")
    assert "saved by a newer one?" in message


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
    obj["version"] = max(F.SUPPORTED_VERSIONS) + 1
    obj["checksum"] = F.manifest_checksum(obj)
    with pytest.raises(F.SnapshotError, match=f"format version {obj['version']} is not supported.*newer"):
        F.parse_manifest(json.dumps(obj).encode(), "here")
    m = _manifest(disks=[F.DiskEntry("../../etc/passwd", False, "")])
    m.files["../../etc/passwd"] = F.FileEntry(1, "d")
    with pytest.raises(F.SnapshotError, match="not allowed"):
        F.parse_manifest(m.to_json(), "here")
    # A qcow2 disk in a version 1 manifest (which an older pocketvm would take for raw) is refused.
    m = _manifest(disks=[F.DiskEntry("disk0.qcow2", False, "", "qcow2")])
    m.files["disk0.qcow2"] = F.FileEntry(1, "d")
    with pytest.raises(F.SnapshotError, match="format is not allowed"):
        F.parse_manifest(m.to_json(), "here")
    m.version = F.VERSION_QCOW2
    m.disks[0].backing = [F.BackingEntry("relative/base.qcow2", "qcow2", 1, "d")]
    with pytest.raises(F.SnapshotError, match="path is not absolute"):
        F.parse_manifest(m.to_json(), "here")
    m.disks[0].backing[0].path = "/abs/base.qcow2"
    assert F.parse_manifest(m.to_json(), "here").disks[0].backing[0].path == "/abs/base.qcow2"
    with pytest.raises(F.SnapshotError, match="not valid JSON"):
        F.parse_manifest(_manifest().to_json()[:50], "here")


def test_device_state_keeps_bytes():
    state = {"uart": {"rx": b"\x00abc\xff", "ier": 5}, "list": [b"", 1, None]}
    assert F.load_state(F.dump_state(state)) == state
