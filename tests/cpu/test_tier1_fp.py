"""F/D instructions in translated code (tier 1, `fpgen`) give exactly the interpreter's results.

Translated code computes the common round-to-nearest-even arithmetic on the
host FPU and derives NX from error-free transformations; everything else
goes to the interpreter's FPU. These tests run instructions translated
(mode "all") and interpreted side by side and compare the whole register
state, fcsr and mstatus: the FPU vectors of tests/cpu/test_fpu_qemu.py (whose
expectations QEMU confirms), operands chosen to hit the fast paths and their
edges (exact and inexact results, cancellation in fused multiply-adds,
NaN-boxing, signalling NaNs, subnormals, overflow, every rounding mode, FS
off), and the fast paths' arithmetic alone against the exact integer FPU on
many more operands.
"""

from __future__ import annotations

import ctypes
import random
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from pocketvm.cpu import state as S
from pocketvm.cpu.hart import Hart
from pocketvm.cpu.tier1 import layout as L
from pocketvm.memory import GuestRAM

sys.path.insert(0, str(Path(__file__).parent))
from test_fpu_oracle import (
    FMA_OPC,
    FMTS,
    MASK64,
    RD_F,
    RD_X,
    RS1,
    RS2,
    RS3,
    RS_X,
    D,
    box,
    encode_op,
    random_value,
    special_values,
)
from test_fpu_oracle import S as SINGLE
from test_fpu_qemu import records_for_sweep

CODE = S.RAM_BASE + 0x1000
SLOT = 8  # an instruction and a jump to itself
JUMP_SELF = 0x0000006F  # jal x0, 0
TRAP_VECTOR = S.RAM_BASE + 0x800
FS_INITIAL = 1 << 13
MSTATUS_FP_ON = (2 << 32) | (2 << 34) | FS_INITIAL


def to_i64(v: int) -> int:
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


class SideBySide:
    """The same code in two harts: one translating every block, one interpreting."""

    def __init__(self) -> None:
        self.fast = Hart(0, GuestRAM(1 << 20), S.new_shared_state(1), jit="all")
        self.plain = Hart(0, GuestRAM(1 << 20), S.new_shared_state(1), jit="off")
        self.slots: dict[int, int] = {}
        for hart in (self.fast, self.plain):
            hart.ram.write_int(TRAP_VECTOR, 4, JUMP_SELF)

    def slot(self, insn: int) -> int:
        """Address of a slot holding `insn` (each distinct instruction is translated once)."""
        if insn not in self.slots:
            at = CODE + SLOT * len(self.slots)
            for hart in (self.fast, self.plain):
                hart.ram.write_int(at, 4, insn)
                hart.ram.write_int(at + 4, 4, JUMP_SELF)
            self.slots[insn] = at
        return self.slots[insn]

    def run(self, insn: int, regs: tuple[int, int, int, int], fcsr: int, mstatus: int = MSTATUS_FP_ON) -> str | None:
        """Execute `insn` once in both; a description of the difference, or None."""
        at = self.slot(insn)
        r1, r2, r3, x = regs
        for hart in (self.fast, self.plain):
            st = hart.st
            st[S.F + RS1], st[S.F + RS2], st[S.F + RS3] = to_i64(r1), to_i64(r2), to_i64(r3)
            st[S.F + RD_F] = 0x1234
            st[S.X + RS_X] = to_i64(x)
            st[S.X + RD_X] = 0x1234
            st[S.CSR + S.CSR_FCSR] = fcsr
            st[S.CSR + S.CSR_MSTATUS] = mstatus
            st[S.CSR + S.CSR_MTVEC] = TRAP_VECTOR
            hart.pc = at
        native = int(self.fast.tier1.table[L.JT_NATIVE])
        self.fast.run(2)
        self.plain.run(2)
        if int(self.fast.tier1.table[L.JT_NATIVE]) == native:
            return f"insn {insn:#010x} did not run translated"
        a, b = self.fast.st, self.plain.st
        for what, index in (("fcsr", S.CSR + S.CSR_FCSR), ("mstatus", S.CSR + S.CSR_MSTATUS), ("mepc", S.CSR + S.CSR_MEPC),
                            ("mcause", S.CSR + S.CSR_MCAUSE), ("pc", S.PC)):  # fmt: skip
            if a[index] != b[index]:
                return f"insn {insn:#010x} regs {[hex(r) for r in regs]} fcsr {fcsr:#x}: {what} {a[index]:#x} != {b[index]:#x}"
        diff = np.nonzero(a[: S.PC] != b[: S.PC])[0]
        if diff.size:
            i = int(diff[0])
            return (
                f"insn {insn:#010x} regs {[hex(r) for r in regs]} fcsr {fcsr:#x}: "
                f"st[{i}] translated {int(a[i]) & MASK64:#x} interpreted {int(b[i]) & MASK64:#x}"
            )
        return None

    def check(self, records) -> None:
        mismatches = [m for rec in records if (m := self.run(rec[0], rec[1:5], rec[5])) is not None]
        assert not mismatches, f"{len(mismatches)} of {len(records)} differ:\n" + "\n".join(mismatches[:20])


@pytest.fixture(scope="module")
def harts() -> SideBySide:
    return SideBySide()


def ordinary(rng: random.Random, f) -> int:
    """A value the fast paths take: moderate exponent, sometimes few mantissa bits (exact results)."""
    e = f.emax + rng.randint(-30, 30)
    m = rng.getrandbits(f.p - 1)
    if rng.random() < 0.4:
        m &= ~((1 << rng.randint(f.p - 8, f.p - 1)) - 1)
    return (rng.getrandbits(1) << (f.width - 1)) | (e << (f.p - 1)) | m


def fast_path_records(seed: int, n: int):
    """Records whose operands mostly take the inline paths (RNE, static or dynamic)."""
    rng = random.Random(seed)
    ops = ["add", "sub", "mul", "div", "sqrt", *FMA_OPC, "to_int", "from_int", "cvt", "min", "max",
           "feq", "flt", "fle", "sgnj", "sgnjn", "sgnjx", "mv_x", "mv_f", "class"]  # fmt: skip
    out = []
    for i in range(n):
        f = FMTS[i % 2]
        op = rng.choice(ops)
        kind = rng.randrange(4)
        a, b, c = (ordinary(rng, f) if rng.random() < 0.85 else random_value(rng, f) for _ in range(3))
        if op in ("add", "sub") and rng.random() < 0.3:  # cancellation
            b = ((a ^ (f.sign if op == "add" else 0)) + rng.randint(-2, 2)) & ((1 << f.width) - 1)
        if op in FMA_OPC and rng.random() < 0.5:  # c near -(a*b): the residual decides NX
            fa, fb = struct.unpack("<dd", struct.pack("<QQ", *(_as_double(v, f) for v in (a, b))))
            p = -fa * fb if op in ("madd", "nmsub") else fa * fb
            c = (_from_double(p, f) + rng.randint(-2, 2)) & ((1 << f.width) - 1)
        if op == "to_int" and rng.random() < 0.5:
            a = _from_double(rng.uniform(-3e9, 3e9) if kind < 2 else rng.uniform(-2e19, 2e19), f)
            if rng.random() < 0.3:
                a = _from_double(rng.randint(-40, 40) / 2, f)  # halfway cases
        x = rng.getrandbits(rng.choice([5, 24, 25, 31, 32, 53, 54, 63, 64]))
        regs = [box(a, SINGLE) if (op == "cvt" and f is D) else box(a, f), box(b, f), box(c, f), x]
        if f is SINGLE and rng.random() < 0.03:
            regs[rng.randrange(3)] &= 0x7FFF_FFFF_FFFF_FFFF  # improperly NaN-boxed
        r = rng.random()
        if r < 0.5:
            insn, fcsr = encode_op(op, f, 7, kind), rng.choice([0, 0, 0, 1, 16])  # dynamic, frm = RNE
        elif r < 0.8:
            insn, fcsr = encode_op(op, f, 0, kind), rng.choice([0, 1, 16, 0x20, 0x40])
        elif r < 0.9:
            insn, fcsr = encode_op(op, f, 7, kind), rng.randrange(5) << 5  # dynamic, any mode
        else:
            insn, fcsr = encode_op(op, f, rng.randrange(5), kind), 0
        out.append((insn, *regs, fcsr))
    return out


def _as_double(bits: int, f) -> int:
    if f is D:
        return bits
    return struct.unpack("<Q", struct.pack("<d", struct.unpack("<f", struct.pack("<I", bits))[0]))[0]


def _from_double(x: float, f) -> int:
    if f is D:
        return struct.unpack("<Q", struct.pack("<d", x))[0]
    return struct.unpack("<I", struct.pack("<f", np.float32(x)))[0]


def test_fast_path_operands(harts: SideBySide) -> None:
    harts.check(fast_path_records(7, 6000))


def test_fpu_vectors_random_sweep(harts: SideBySide) -> None:
    harts.check(records_for_sweep(31337, 4000))


def test_fpu_vectors_edge_pairs(harts: SideBySide) -> None:
    records = []
    for f in FMTS:
        vals = special_values(f)
        for op in ("add", "sub", "mul", "div", "min", "max", "flt", "fle", "feq", "madd", "nmsub"):
            for i, a in enumerate(vals):
                for j, b in enumerate(vals[(i % 3) :: 3]):
                    rm = 7 if (i + j) % 2 else (i + j) % 5
                    records.append((encode_op(op, f, rm), box(a, f), box(b, f), box(vals[j], f), 0, 0))
        for a in vals:
            for rm in (0, 1, 7):
                for kind in range(4):
                    records.append((encode_op("to_int", f, rm, kind), box(a, f), 0, 0, 0, 0))
                records.append((encode_op("sqrt", f, rm), box(a, f), 0, 0, 0, 0))
                records.append((encode_op("cvt", f, rm), box(a, SINGLE) if f is D else a, 0, 0, 0, 0))
    harts.check(records)


def test_flags_already_set_and_fs_off(harts: SideBySide) -> None:
    """Sticky flags stay; with FS off every F/D instruction traps (illegal) before changing anything."""
    records = fast_path_records(11, 300)
    for insn, r1, r2, r3, x, _ in records:
        for fcsr, mstatus in ((0x1F, MSTATUS_FP_ON), (0, MSTATUS_FP_ON | (3 << 13)), (0, MSTATUS_FP_ON & ~(3 << 13))):
            diff = harts.run(insn, (r1, r2, r3, x), fcsr, mstatus)
            assert diff is None, diff


def test_reserved_rounding_modes_are_illegal_in_translated_code(harts: SideBySide) -> None:
    records = []
    for f in FMTS:
        for op in ("add", "mul", "div", "sqrt", "madd", "cvt", "to_int", "from_int"):
            records.append((encode_op(op, f, 5), box(0x3F80_0000 if f is SINGLE else 1 << 62, f), 0, 0, 3, 0))
            for frm in (5, 6, 7):  # dynamic with a reserved frm
                records.append((encode_op(op, f, 7), box(0x3F80_0000 if f is SINGLE else 1 << 62, f), 0, 0, 3, frm << 5))
    harts.check(records)


# --- the fast paths' arithmetic alone, against the exact FPU -----------------------------
def _math_functions():
    """The FpMath value code wrapped in functions f(double..., i64 *out) -> out = (bits, ok, nx)."""
    import llvmlite.binding as llvm

    from pocketvm.cpu.tier1.fpgen import FpMath
    from pocketvm.cpu.tier1.translator import _SETTINGS, GOOD, ObjectCompiler, init_llvm

    def text(name: str, nargs: int, body, single: bool) -> str:
        lines: list[str] = []

        def v(t: str) -> str:
            lines.append(f"  %t{len(lines)} = {t}")
            return f"%t{len(lines) - 1}"

        args = [f"%a{i}" for i in range(nargs)]
        r, ok, nx = body(FpMath(v), *args)
        bits = v(f"zext i32 {v(f'bitcast float {r} to i32')} to i64") if single else v(f"bitcast double {r} to i64")
        for k, value in enumerate((bits, v(f"zext i1 {ok} to i64"), v(f"zext i1 {nx} to i64"))):
            lines.append(f"  store i64 {value}, ptr {v(f'getelementptr i64, ptr %out, i64 {k}')}")
        params = ", ".join(f"double {a}" for a in args)
        return f"define void @{name}({params}, ptr %out) {{\n" + "\n".join(lines) + "\n  ret void\n}\n"

    fns = {
        "fma_d": (3, lambda m, a, b, c: m.fma_d(a, b, c), False),
        "fma_s": (3, lambda m, a, b, c: m.fma_s(a, b, c), True),
        "add_d": (2, lambda m, a, b: m.add_d(a, b), False),
        "mul_d": (2, lambda m, a, b: m.mul_d(a, b), False),
        "div_d": (2, lambda m, a, b: m.div_d(a, b), False),
        "sqrt_d": (1, lambda m, a: m.sqrt_d(a), False),
    }
    for name, funct5 in (("add", 0), ("sub", 1), ("mul", 2), ("div", 3), ("sqrt", 0x0B)):
        fns[f"{name}_s"] = (2, lambda m, a, b, f5=funct5: m.arith_s(f5, a, b), True)
    init_llvm()
    mod = llvm.parse_assembly("".join(text(k, n, body, s) for k, (n, body, s) in fns.items()))
    mod.verify()
    compiler = ObjectCompiler()
    # As hot code is compiled, with LLVM's -O2 passes added: the transformations must survive both.
    compiler._optimise(mod, _SETTINGS[GOOD][1])
    compiler._optimise(mod, "o2")
    engine = llvm.create_mcjit_compiler(mod, compiler._tm[GOOD])
    engine.finalize_object()
    out = np.zeros(3, dtype=np.uint64)
    calls = {
        k: ctypes.CFUNCTYPE(None, *([ctypes.c_double] * n), ctypes.c_void_p)(engine.get_function_address(k))
        for k, (n, _, _) in fns.items()
    }

    def call(name: str, *xs: float) -> tuple[int, bool, bool]:
        calls[name](*xs, out.ctypes.data)
        return int(out[0]), bool(out[1]), bool(out[2])

    call.engine = engine  # type: ignore[attr-defined]  # keeps the code alive
    return call


def _d(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits & MASK64))[0]


def _f(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFF_FFFF))[0]


def test_fast_arithmetic_matches_the_exact_fpu() -> None:
    """Whenever a fast path accepts its operands, its result and NX are the exact FPU's
    (fused multiply-adds with the addend near -a*b included)."""
    from pocketvm.cpu.fparith import fp_add, fp_div, fp_fma, fp_mul, fp_sqrt

    call = _math_functions()
    rng = random.Random(2024)
    taken = mismatches = 0
    bad: list[str] = []

    def expect(name: str, got: tuple[int, bool, bool], want: tuple[int, int]) -> None:
        nonlocal taken, mismatches
        bits, ok, nx = got
        if ok:
            taken += 1
            if (want[0] & MASK64, want[1]) != (bits, int(nx)):
                mismatches += 1
                bad.append(f"{name}: fast {bits:#x}/{int(nx)} exact {want[0] & MASK64:#x}/{want[1]}")

    for _ in range(15000):
        for f in FMTS:
            dbl = int(f is D)
            conv = _d if dbl else _f
            a, b = (ordinary(rng, f) if rng.random() < 0.7 else random_value(rng, f) for _ in range(2))
            c = random_value(rng, f)
            if rng.random() < 0.6:  # the addend near -(a*b), maybe scaled
                p = -conv(a) * conv(b)
                if not np.isnan(p) and abs(p) < (1e300 if dbl else 3e38):
                    c = (_from_double(p, f) + rng.randint(-3, 3)) & ((1 << f.width) - 1)
            sa, sb, sc = (to_i64(v) for v in (a, b, c))
            expect("fma", call("fma_d" if dbl else "fma_s", conv(a), conv(b), conv(c)), fp_fma(sa, sb, sc, 0, 0, dbl, 0))
            if rng.random() < 0.3:
                b = ((a ^ f.sign) + rng.randint(-2, 2)) & ((1 << f.width) - 1)  # cancellation
                sb = to_i64(b)
            suffix = "_d" if dbl else "_s"
            expect("add", call("add" + suffix, conv(a), conv(b)), fp_add(sa, sb, 0, dbl, 0))
            if not dbl:
                expect("sub", call("sub_s", conv(a), conv(b)), fp_add(sa, sb, 1, dbl, 0))
            expect("mul", call("mul" + suffix, conv(a), conv(b)), fp_mul(sa, sb, dbl, 0))
            expect("div", call("div" + suffix, conv(a), conv(b)), fp_div(sa, sb, dbl, 0))
            sqrt_args = (conv(a),) if dbl else (conv(a), 0.0)
            expect("sqrt", call("sqrt" + suffix, *sqrt_args), fp_sqrt(sa, dbl, 0))
    assert not bad, f"{mismatches} of {taken} fast results differ:\n" + "\n".join(bad[:20])
    assert taken > 100000, "the fast paths hardly ever ran"
