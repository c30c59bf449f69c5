"""Differential test of fp_execute against QEMU's RISC-V FPU (user-mode qemu-riscv64).

A small static riscv64 program reads records (instruction word, f1, f2, f3,
x11, fcsr), executes each instruction from an executable page with rd = f4 /
x10, and writes back (f4, x10, fcsr).  The same records go through
fp_execute and must agree bit for bit, flags included.
Needs riscv64-linux-gnu-gcc and the Debian package qemu-user.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_fpu_oracle import (  # noqa: E402
    FMA_OPC,
    FMTS,
    MASK64,
    S,
    Hart,
    box,
    encode_op,
    random_value,
    special_values,
)

RUNNER_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>

int main(void) {
    uint32_t *code = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (code == MAP_FAILED) return 2;
    uint64_t rec[6], out[3];
    while (fread(rec, 8, 6, stdin) == 6) {
        code[0] = (uint32_t)rec[0];
        code[1] = 0x00008067; /* ret */
        __builtin___clear_cache((char *)code, (char *)(code + 2));
        uint64_t f4, fc;
        register uint64_t a0 asm("a0") = 0x1234;
        register uint64_t a1 asm("a1") = rec[4];
        asm volatile(
            "fmv.d.x f1, %[r1]\n\t"
            "fmv.d.x f2, %[r2]\n\t"
            "fmv.d.x f3, %[r3]\n\t"
            "fmv.d.x f4, %[init]\n\t"
            "fscsr %[fin]\n\t"
            "jalr ra, 0(%[code])\n\t"
            "frcsr %[fc]\n\t"
            "fmv.x.d %[f4], f4\n\t"
            : [fc] "=&r"(fc), [f4] "=&r"(f4), "+r"(a0)
            : [r1] "r"(rec[1]), [r2] "r"(rec[2]), [r3] "r"(rec[3]), [fin] "r"(rec[5]),
              [code] "r"(code), [init] "r"((uint64_t)0x1234), "r"(a1)
            : "ra", "f1", "f2", "f3", "f4", "memory");
        out[0] = f4;
        out[1] = a0;
        out[2] = fc;
        fwrite(out, 8, 3, stdout);
    }
    return 0;
}
"""

GCC = "riscv64-linux-gnu-gcc"
QEMU = "qemu-riscv64"

pytestmark = pytest.mark.skipif(
    shutil.which(GCC) is None or shutil.which(QEMU) is None,
    reason="needs riscv64-linux-gnu-gcc and qemu-riscv64 (Debian package qemu-user)",
)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    d = tmp_path_factory.mktemp("fpu_qemu")
    src = d / "runner.c"
    src.write_text(RUNNER_C)
    exe = d / "runner"
    subprocess.run([GCC, "-static", "-O1", "-o", str(exe), str(src)], check=True, timeout=120)
    return exe


def run_qemu(exe: Path, records: list[tuple[int, ...]]) -> list[tuple[int, int, int]]:
    data = b"".join(struct.pack("<6Q", *(v & MASK64 for v in r)) for r in records)
    proc = subprocess.run([QEMU, str(exe)], input=data, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    raw = proc.stdout
    assert len(raw) == 24 * len(records)
    return [struct.unpack_from("<3Q", raw, 24 * i) for i in range(len(records))]


def records_for_sweep(seed: int, n: int):
    rng = random.Random(seed)
    ops = ["add", "sub", "mul", "div", "sqrt", *FMA_OPC, "to_int", "from_int", "cvt", "min", "max",
           "feq", "flt", "fle", "class", "sgnj", "sgnjn", "sgnjx", "mv_x", "mv_f"]
    out = []
    for i in range(n):
        f = FMTS[i % 2]
        op = rng.choice(ops)
        dyn = rng.random() < 0.2
        rm = rng.randrange(5)
        kind = rng.randrange(4)
        vals = special_values(f)
        a, b, c = (rng.choice(vals) if rng.random() < 0.3 else random_value(rng, f) for _ in range(3))
        if op in ("add", "sub") and rng.random() < 0.3:
            b = ((a ^ f.sign) + rng.randint(-2, 2)) & ((1 << f.width) - 1)
        regs = [box(a, S) if (op == "cvt" and f.dbl) else box(a, f), box(b, f), box(c, f),
                rng.getrandbits(rng.choice([5, 31, 32, 53, 63, 64]))]
        if f is S and rng.random() < 0.03:
            regs[rng.randrange(3)] &= 0x7FFF_FFFF_FFFF_FFFF  # improperly NaN-boxed
        insn = encode_op(op, f, 7 if dyn else rm, kind)
        fcsr = (rm << 5 if dyn else rng.randrange(8) << 5) | rng.choice([0, 0, 0, 1, 16])
        out.append((insn, *regs, fcsr))
    return out


def compare(exe, records):
    hart = Hart()
    expected = run_qemu(exe, records)
    mismatches = []
    for rec, (qf4, qx10, qfcsr) in zip(records, expected):
        insn, r1, r2, r3, x, fcsr = rec
        rc, out, flags, _ = hart.run(insn, (r1, r2, r3, x), fcsr=fcsr)
        assert rc == 0, hex(insn)
        int_dest = (insn & 0x7F) == 0x53 and (insn >> 27) in (0x18, 0x14, 0x1C)
        q_out = qx10 if int_dest else qf4
        fcsr_now = int(hart.st[hart.s.CSR + hart.s.CSR_FCSR])
        if (out, fcsr_now) != (q_out, qfcsr & 0xFF):
            mismatches.append(
                f"insn={insn:#010x} regs={[hex(v) for v in (r1, r2, r3, x)]} fcsr={fcsr:#x}: "
                f"ours {out:#x}/{fcsr_now:#x} qemu {q_out:#x}/{qfcsr:#x}"
            )
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:20])


def test_qemu_edge_pairs(runner):
    records = []
    for f in FMTS:
        vals = special_values(f)
        for op in ("add", "mul", "div", "min", "flt", "feq"):
            for i, a in enumerate(vals):
                for j, b in enumerate(vals[(i % 3)::3]):
                    rm = (i + j) % 5
                    records.append((encode_op(op, f, rm), box(a, f), box(b, f), 0, 0, 0))
        for a in vals:
            for rm in range(5):
                for kind in range(4):
                    records.append((encode_op("to_int", f, rm, kind), box(a, f), 0, 0, 0, 0))
                records.append((encode_op("sqrt", f, rm), box(a, f), 0, 0, 0, 0))
    compare(runner, records)


def test_qemu_random_sweep(runner):
    compare(runner, records_for_sweep(31337, 6000))


def test_qemu_agrees_on_illegal_encodings(runner):
    """Encodings fp_execute rejects make QEMU raise SIGILL, and their legal twins do not."""
    from test_fpu_oracle import D, enc_opfp

    cases = [  # (insn, fcsr)
        (encode_op("add", D, 5), 0), (encode_op("mul", S, 6), 0), (encode_op("cvt", D, 5), 0),
        (encode_op("from_int", D, 6, 0), 0), (encode_op("cvt", D, 7), 5 << 5), (encode_op("madd", D, 7), 6 << 5),
        (enc_opfp(0x04, 1, 3, 4, 1, 2), 0), (enc_opfp(0x1C, 1, 0, 10, 1, 1), 0), (enc_opfp(0x08, 0, 0, 4, 1, 0), 0),
        (encode_op("add", D, 0) | (3 << 25), 0),
    ]
    hart = Hart()
    regs = (0xFFFF_FFFF_3F80_0000, 0x3FF0_0000_0000_0000, 0, 1)
    for insn, fcsr in cases:
        assert hart.run(insn, regs, fcsr=fcsr)[0] == 1, hex(insn)
        data = struct.pack("<6Q", insn, *regs[:3], regs[3], fcsr)
        proc = subprocess.run([QEMU, str(runner)], input=data, capture_output=True, timeout=60)
        assert proc.returncode == -4, (hex(insn), proc.returncode)  # SIGILL
    legal = struct.pack("<6Q", encode_op("cvt", D, 7), *regs[:3], regs[3], 4 << 5)
    assert subprocess.run([QEMU, str(runner)], input=legal, capture_output=True, timeout=60).returncode == 0
