"""Helpers for the board tests: cross-compiling guest programs, decompiling
DTBs with dtc, crafting ELF and kernel Image files, running QEMU.

The DTS reader here is independent of pocketvm's DTB writer on purpose: the
tests read what dtc decompiled, not what the writer meant to write.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

GUEST_DIR = Path(__file__).resolve().parent / "guest"
CROSS = "riscv64-linux-gnu-"
CFLAGS = [
    "-nostdlib",
    "-static",
    "-march=rv64gc",
    "-mabi=lp64d",
    "-Wl,--build-id=none",
    "-Wl,-N",  # one segment from -Ttext on, no ELF headers mapped below it
    "-Wl,--no-warn-rwx-segments",
]
OPENSBI = Path("/usr/share/qemu/opensbi-riscv64-generic-fw_dynamic.bin")
QEMU = "qemu-system-riscv64"


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def cross_build(src: str, out: Path, text_addr: int, defines: dict[str, int] | None = None) -> Path:
    """Assemble tests/board/guest/<src> into an ELF linked at `text_addr`."""
    cc = need_tool(CROSS + "gcc")
    args = [cc, *CFLAGS, f"-Wl,-Ttext={text_addr:#x}", "-o", str(out), str(GUEST_DIR / src)]
    args += [f"-D{k}={v:#x}" for k, v in (defines or {}).items()]
    subprocess.run(args, check=True, capture_output=True)
    return out


def quick_link(src: str, out: Path, text_addr: int) -> Path:
    """Build tests/board/guest/<src> the way a user types it, with the linker's
    default layout: read-only ELF headers and build-id note in a segment of
    their own at 0x10000, far below RAM."""
    cc = need_tool(CROSS + "gcc")
    subprocess.run([cc, "-nostdlib", "-static", f"-Wl,-Ttext={text_addr:#x}", "-o", str(out), str(GUEST_DIR / src)],
                   check=True, capture_output=True)
    return out


def objcopy_binary(elf: Path, out: Path) -> Path:
    subprocess.run([need_tool(CROSS + "objcopy"), "-O", "binary", str(elf), str(out)], check=True)
    return out


# --- device trees ----------------------------------------------------------


def decompile(dtb: bytes, tmp_path: Path) -> tuple[str, str]:
    """dtc's DTS text for `dtb`, and dtc's warnings."""
    dtc = need_tool("dtc")
    path = tmp_path / "tree.dtb"
    path.write_bytes(dtb)
    res = subprocess.run([dtc, "-I", "dtb", "-O", "dts", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout, res.stderr


_ESCAPES = {"0": 0, "n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11, "\\": 92, '"': 34}


def _unescape(body: str) -> bytes:
    # dtc writes "\0" between strings, "\xNN" for other unprintable bytes and
    # C escapes for the usual suspects; it never writes octal.
    out = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode()
            i += 1
        elif body[i + 1] == "x":
            out.append(int(body[i + 2 : i + 4], 16))
            i += 4
        else:
            out.append(_ESCAPES[body[i + 1]])
            i += 2
    return bytes(out)


def _value_bytes(text: str) -> bytes:
    """Encode a DTS property value (cells, strings, byte strings) as raw bytes."""
    out = bytearray()
    for m in re.finditer(r'<([^>]*)>|"((?:[^"\\]|\\.)*)"|\[([^\]]*)\]', text):
        if m.group(1) is not None:
            for cell in m.group(1).split():
                out += struct.pack(">I", int(cell, 0))
        elif m.group(2) is not None:
            out += _unescape(m.group(2)) + b"\0"
        else:
            out += bytes.fromhex(m.group(3).replace(" ", ""))
    return bytes(out)


def parse_dts(text: str) -> dict[str, dict[str, bytes]]:
    """{node path: {property: raw value}} from dtc's output format."""
    nodes: dict[str, dict[str, bytes]] = {}
    stack: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("/dts-v1/") or line.startswith("/memreserve/"):
            continue
        if line.endswith("{"):
            name = line[:-1].strip()
            if name == "/":
                path = "/"
            else:
                name = name.split(":")[-1].strip()  # drop labels
                path = (stack[-1].rstrip("/") + "/" + name) if stack else name
            stack.append(path)
            nodes[path] = {}
        elif line == "};":
            stack.pop()
        else:
            assert line.endswith(";"), line
            body = line[:-1]
            if "=" in body:
                name, value = body.split("=", 1)
                nodes[stack[-1]][name.strip()] = _value_bytes(value)
            else:
                nodes[stack[-1]][body.strip()] = b""
    return nodes


def cells(value: bytes) -> list[int]:
    assert len(value) % 4 == 0, value
    return list(struct.unpack(f">{len(value) // 4}I", value))


def strings(value: bytes) -> list[str]:
    assert value.endswith(b"\0"), value
    return value[:-1].decode().split("\0")


def u64(value: bytes) -> int:
    hi, lo = cells(value)
    return hi << 32 | lo


def tree_of(dtb: bytes, tmp_path: Path) -> dict[str, dict[str, bytes]]:
    text, warnings = decompile(dtb, tmp_path)
    assert warnings == "", warnings
    return parse_dts(text)


# --- synthetic files -------------------------------------------------------

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
PF_X, PF_W, PF_R = 1, 2, 4
PF_RWX = PF_R | PF_W | PF_X


def make_elf(
    segments: list[tuple[int, bytes, int]] | list[tuple[int, bytes, int, int]],
    entry: int,
    *,
    klass: int = 2,
    data: int = 1,
    machine: int = 243,
    e_type: int = 2,
    vaddr_offset: int = 0,
) -> bytes:
    """An ELF with one PT_LOAD per (paddr, bytes, memsz[, p_flags]); p_flags is RWX unless given."""
    ident = b"\x7fELF" + bytes([klass, data, 1]) + bytes(9)
    phoff = EHDR.size
    body_off = phoff + PHDR.size * len(segments)
    header = EHDR.pack(ident, e_type, machine, 1, entry, phoff, 0, 0, EHDR.size, PHDR.size, len(segments), 0, 0, 0)
    phdrs = b""
    body = b""
    for paddr, blob, memsz, *flags in segments:
        off = body_off + len(body)
        phdrs += PHDR.pack(1, flags[0] if flags else PF_RWX, off, paddr + vaddr_offset, paddr, len(blob), memsz, 8)
        body += blob
    return header + phdrs + body


def make_kernel_image(payload: bytes = b"\x13\x00\x00\x00" * 64, image_size: int = 0, text_offset: int = 0x200000,
                      flags: int = 0) -> bytes:
    """A RISC-V Linux Image: the 64-byte header, then `payload`."""
    size = image_size or 64 + len(payload)
    header = struct.pack("<IIQQQIIQ8s4sI", 0x0000006F, 0, text_offset, size, flags, 2, 0, 0,
                         b"RISCV\0\0\0", b"RSC\x05", 0)
    return header + payload


def run_qemu(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    qemu = need_tool(QEMU)
    return subprocess.run([qemu, *args], capture_output=True, text=True, timeout=timeout)
