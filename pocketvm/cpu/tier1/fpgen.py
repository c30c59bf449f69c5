"""LLVM IR for the F and D instructions of a translated region.

Floating-point registers live in allocas for the whole region, like the
integer ones (`codegen.BlockCodegen`), as raw 64-bit patterns (singles
NaN-boxed): loaded at entry, written back at every exit, so LLVM keeps them
in host registers.

The common arithmetic runs inline when the effective rounding mode is
round-to-nearest-even (rm = RNE, or DYN with frm = RNE in fcsr at run time):
the host FPU rounds to nearest-even, so its result is the right one and only
NX needs work, which error-free transformations give exactly (the method of
`pocketvm.cpu.fpfast`): TwoSum for sums, the FMA residual for products,
quotients and square roots, and for the fused multiply-add Boldo and
Muller's ErrFma ("Exact and approximated error of the FMA", IEEE TC 2011),
which writes a*b + c - fma(a, b, c) as the exact sum of two doubles. Those
are exact only away from overflow and underflow, hence the operand ranges.
Anything the inline code cannot settle cheaply -- a NaN or infinite operand,
a result that may be tiny or overflow, an improperly boxed single, another
rounding mode, a rare instruction -- runs the interpreter's own FPU
(`fp_helper.fp_entry`) for that one instruction, so results, fflags, NaN
boxing and mstatus.FS are exactly the interpreter's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pocketvm.cpu.state import CSR, CSR_FCSR, CSR_MSTATUS, F, X
from pocketvm.cpu.tier1.layout import JT_FP_ENTRY

if TYPE_CHECKING:
    from pocketvm.cpu.tier1.codegen import BlockCodegen
    from pocketvm.cpu.tier1.decode import Insn

FS = 3 << 13
DIRTY = (3 << 13) | (-(1 << 63))  # FS = Dirty and SD
NAN_BOX = -(1 << 32)
CANON_NAN_S = 0x7FC00000
NX = 1

OP_FP = 0x53
FMA_OPCODES = (0x43, 0x47, 0x4B, 0x4F)  # fmadd, fmsub, fnmsub, fnmadd
FP_LOAD = 0x07
FP_STORE = 0x27
SYSTEM = 0x73  # CSR instructions may change mstatus or fcsr

RNE = 0
RTZ = 1
DYN = 7


def dconst(x: float) -> str:
    """A double constant as LLVM IR writes it exactly (its bits in hex)."""
    return f"0x{struct.unpack('<Q', struct.pack('<d', x))[0]:016X}"


LO = dconst(2.0**-400)  # mul/div/sqrt operands: products and residuals stay normal
HI = dconst(2.0**400)
C_LO = dconst(2.0**-800)  # the addend of an FMA
C_HI = dconst(2.0**800)
R_LO = dconst(2.0**-900)  # an FMA result nearer to zero goes to the exact FPU
MIN_NORMAL_S = dconst(2.0**-126)
MAX_S = dconst(3.4028234663852886e38)
ZERO = dconst(0.0)
TWO52 = dconst(2.0**52)


@dataclass(frozen=True)
class Operands:
    """The registers an F/D instruction reads and writes."""

    freads: tuple[int, ...] = ()
    fwrite: int | None = None
    xread: int | None = None
    xwrite: int | None = None


def fp_operands(insn: Insn) -> Operands | None:
    """Operands of an F/D instruction (None for other instructions; none at all when illegal)."""
    op, rd, rs1, rs2 = insn.opcode, insn.rd, insn.rs1, insn.rs2
    if op == FP_LOAD:
        return Operands(fwrite=rd, xread=rs1)
    if op == FP_STORE:
        return Operands(freads=(rs2,), xread=rs1)
    if op in FMA_OPCODES:
        return Operands(freads=(rs1, rs2, insn.bits >> 27), fwrite=rd)
    if op != OP_FP:
        return None
    funct5 = insn.bits >> 27
    if funct5 <= 5:  # add, sub, mul, div, sgnj, min/max
        return Operands(freads=(rs1, rs2), fwrite=rd)
    if funct5 in (0x08, 0x0B):  # fcvt between formats, sqrt
        return Operands(freads=(rs1,), fwrite=rd)
    if funct5 == 0x14:  # compares
        return Operands(freads=(rs1, rs2), xwrite=rd)
    if funct5 in (0x18, 0x1C):  # fcvt to integer, fmv.x / fclass
        return Operands(freads=(rs1,), xwrite=rd)
    if funct5 in (0x1A, 0x1E):  # fcvt from integer, fmv from x
        return Operands(fwrite=rd, xread=rs1)
    return Operands()


class FpMath:
    """Value-level IR of the fast paths; each returns (result, ok, inexact) as IR names.

    `ok` (i1) says the result is the correctly rounded one in RNE and
    `inexact` its NX; only `v` (emit `%N = text`, return %N) is needed, so
    tests can wrap these in functions of their own."""

    def __init__(self, v: Callable[[str], str]):
        self.v = v

    def call(self, name: str, *args: str) -> str:
        return self.v(f"call double @llvm.{name}.f64({', '.join(f'double {a}' for a in args)})")

    def both(self, a: str, b: str) -> str:
        return self.v(f"and i1 {a}, {b}")

    def within(self, x: str, lo: str, hi: str, strict_lo: bool = False) -> str:
        """lo <= |x| <= hi (false for NaN)."""
        a = self.call("fabs", x)
        return self.both(self.v(f"fcmp {'ogt' if strict_lo else 'oge'} double {a}, {lo}"),
                         self.v(f"fcmp ole double {a}, {hi}"))  # fmt: skip

    def nonzero(self, x: str) -> str:
        return self.v(f"fcmp une double {x}, {ZERO}")

    def two_sum(self, x: str, y: str) -> tuple[str, str]:
        """(s, e): s = fl(x + y) and x + y = s + e exactly (no overflow)."""
        v = self.v
        s = v(f"fadd double {x}, {y}")
        bv = v(f"fsub double {s}, {x}")
        av = v(f"fsub double {s}, {bv}")
        e = v(f"fadd double {v(f'fsub double {x}, {av}')}, {v(f'fsub double {y}, {bv}')}")
        return s, e

    def residual(self, a: str, b: str, c: str) -> str:
        """fma(a, b, -c): a*b - c exactly when it is representable."""
        return self.call("fma", a, b, self.v(f"fneg double {c}"))

    # --- double ---------------------------------------------------------------
    def add_d(self, x: str, y: str) -> tuple[str, str, str]:
        r, err = self.two_sum(x, y)
        finite = self.v(f"fcmp oeq double {self.v(f'fsub double {err}, {err}')}, {ZERO}")  # overflow, inf, NaN
        return r, finite, self.nonzero(err)

    def mul_d(self, x: str, y: str) -> tuple[str, str, str]:
        ok = self.both(self.within(x, LO, HI), self.within(y, LO, HI))
        r = self.v(f"fmul double {x}, {y}")
        return r, ok, self.nonzero(self.residual(x, y, r))

    def div_d(self, x: str, y: str) -> tuple[str, str, str]:
        ok = self.both(self.within(x, LO, HI), self.within(y, LO, HI))
        r = self.v(f"fdiv double {x}, {y}")
        return r, ok, self.nonzero(self.residual(r, y, x))  # exact iff r*y == x

    def sqrt_d(self, x: str) -> tuple[str, str, str]:
        ok = self.both(self.v(f"fcmp oge double {x}, {LO}"), self.v(f"fcmp ole double {x}, {HI}"))
        r = self.call("sqrt", x)
        return r, ok, self.nonzero(self.residual(r, r, x))

    def fma_d(self, a: str, b: str, c: str) -> tuple[str, str, str]:
        r1, ok = self.fma_d_result(a, b, c)
        return r1, ok, self.fma_d_inexact(a, b, c, r1)

    def fma_d_result(self, a: str, b: str, c: str) -> tuple[str, str]:
        """fl(a*b + c) and whether NX can be decided exactly (`fma_d_inexact`)."""
        v = self.v
        c_ok = v(f"or i1 {v(f'fcmp oeq double {c}, {ZERO}')}, {self.within(c, C_LO, C_HI)}")
        ok = self.both(self.both(self.within(a, LO, HI), self.within(b, LO, HI)), c_ok)
        r1 = self.call("fma", a, b, c)
        return r1, self.both(ok, v(f"fcmp oge double {self.call('fabs', r1)}, {R_LO}"))

    def fma_d_inexact(self, a: str, b: str, c: str, r1: str) -> str:
        """ErrFma: a*b + c - r1 = gamma + alpha2 exactly, so r1 is exact iff gamma + alpha2 == 0."""
        v = self.v
        u1 = v(f"fmul double {a}, {b}")
        u2 = self.residual(a, b, u1)  # a*b = u1 + u2
        alpha1, alpha2 = self.two_sum(c, u2)
        beta1, beta2 = self.two_sum(u1, alpha1)
        gamma = v(f"fadd double {v(f'fsub double {beta1}, {r1}')}, {beta2}")
        return self.nonzero(v(f"fadd double {gamma}, {alpha2}"))

    # --- single, computed in double ----------------------------------------------
    def arith_s(self, funct5: int, x: str, y: str) -> tuple[str, str, str]:
        """add/sub/mul/div/sqrt of singles (given as doubles); the result is a float.
        Rounding the double result again to single is harmless for these (53 >= 2*24 + 2)."""
        v = self.v
        err = None
        ok = "true"
        if funct5 == 0x0B:
            ok = v(f"fcmp ogt double {x}, {ZERO}")
            r = self.call("sqrt", x)
        elif funct5 <= 1:
            if funct5 == 1:
                y = v(f"fneg double {y}")
            r, err = self.two_sum(x, y)
        elif funct5 == 2:
            r = v(f"fmul double {x}, {y}")  # exact in double
        else:
            ok = self.nonzero(y)
            r = v(f"fdiv double {x}, {y}")
        # Strictly above the smallest normal single and at most the largest:
        # the single result is neither tiny nor an overflow.
        ok = self.both(ok, self.within(r, MIN_NORMAL_S, MAX_S, strict_lo=True))
        r32 = v(f"fptrunc double {r} to float")
        q = v(f"fpext float {r32} to double")
        if funct5 == 0x0B:
            inexact = v(f"fcmp une double {v(f'fmul double {q}, {q}')}, {x}")  # exact: 24 x 24 bits
        elif funct5 == 3:
            inexact = v(f"fcmp une double {v(f'fmul double {q}, {y}')}, {x}")
        else:
            inexact = v(f"fcmp une double {q}, {r}")
            if err is not None:
                inexact = v(f"or i1 {inexact}, {self.nonzero(err)}")
        return r32, ok, inexact

    def fma_s(self, a: str, b: str, c: str) -> tuple[str, str, str]:
        """fl32(a*b + c) for singles given as doubles: a*b is exact in double and
        TwoSum makes the sum exact as s + t; rounding s to single is then right
        unless s lies exactly halfway between two singles and t != 0 (left to the FPU)."""
        v = self.v
        s, t = self.two_sum(v(f"fmul double {a}, {b}"), c)
        ok = self.within(s, MIN_NORMAL_S, MAX_S, strict_lo=True)
        low = v(f"and i64 {v(f'bitcast double {s} to i64')}, {(1 << 29) - 1}")
        tie = self.both(v(f"icmp eq i64 {low}, {1 << 28}"), self.nonzero(t))
        ok = self.both(ok, v(f"xor i1 {tie}, true"))
        r32 = v(f"fptrunc double {s} to float")
        q = v(f"fpext float {r32} to double")
        inexact = v(f"or i1 {self.nonzero(t)}, {v(f'fcmp une double {q}, {s}')}")
        return r32, ok, inexact


class FpGen:
    """Emits the F/D instructions of one region into a BlockCodegen."""

    def __init__(self, cg: BlockCodegen):
        self.cg = cg
        self.math = FpMath(cg.v)
        regs: set[int] = set()
        written: set[int] = set()
        for insn in cg.insns:
            ops = fp_operands(insn)
            if ops is None:
                continue
            regs.update(ops.freads)
            if ops.fwrite is not None:
                regs.add(ops.fwrite)
                written.add(ops.fwrite)
        self.regs = sorted(regs)
        self.written = sorted(written)
        # What is known of mstatus in the current sub-block: (its insns, index
        # of the last F/D instruction, FS already Dirty). Nothing between two F/D
        # instructions of a sub-block changes mstatus but a CSR instruction.
        self._known: tuple[int, int, bool] | None = None
        self._dirty = False  # FS known Dirty at the instruction being emitted

    # --- the region's hooks ----------------------------------------------------------------
    def allocas(self) -> None:
        for r in self.regs:
            self.cg.put(f"%f{r} = alloca i64")

    def load_registers(self) -> None:
        for r in self.regs:
            self.cg.put(f"store i64 {self.cg.v(f'load i64, ptr {self.cg.st_ptr(F + r)}')}, ptr %f{r}")

    def store_registers(self) -> None:
        for r in self.written:
            self.cg.put(f"store i64 {self.cg.v(f'load i64, ptr %f{r}')}, ptr {self.cg.st_ptr(F + r)}")

    # --- helpers -------------------------------------------------------------------------
    def fget(self, r: int) -> str:
        return self.cg.v(f"load i64, ptr %f{r}")

    def fset(self, r: int, bits: str) -> None:
        self.cg.put(f"store i64 {bits}, ptr %f{r}")

    def as_double(self, bits: str) -> str:
        return self.cg.v(f"bitcast i64 {bits} to double")

    def single(self, bits: str) -> tuple[str, str]:
        """(boxed, value as double) of a single register image."""
        v = self.cg.v
        boxed = v(f"icmp eq i64 {v(f'ashr i64 {bits}, 32')}, -1")
        f = v(f"bitcast i32 {v(f'trunc i64 {bits} to i32')} to float")
        return boxed, v(f"fpext float {f} to double")

    def box(self, f32: str) -> str:
        v = self.cg.v
        word = v(f"bitcast float {f32} to i32")
        return v(f"or i64 {v(f'zext i32 {word} to i64')}, {NAN_BOX}")

    def fs_on(self, i: int) -> None:
        """Leave before instruction i (the interpreter raises illegal) when mstatus.FS is Off,
        unless an earlier F/D instruction of this sub-block made sure it is on."""
        known = self._known
        dirty: bool | None = None
        cur = self.cg.cur
        if (
            known is not None
            and known[0] == id(cur)
            and known[1] < i
            and not any(x.opcode == SYSTEM for x in cur[known[1] + 1 : i])
        ):
            dirty = known[2]
        if dirty is None:
            v = self.cg.v
            mstatus = v(f"load i64, ptr {self.cg.st_ptr(CSR + CSR_MSTATUS)}")
            self.cg.side_exit_if(v(f"icmp eq i64 {v(f'and i64 {mstatus}, {FS}')}, 0"), i)
            dirty = False
        self._dirty = dirty

    def done(self, i: int, dirty: bool) -> None:
        """After instruction i (on every path that goes on): FS is on, and Dirty if `dirty`."""
        self._known = (id(self.cg.cur), i, dirty)

    def set_dirty(self, when: str | None = None) -> None:
        """mstatus.FS = Dirty (only `when`, an i1, if given)."""
        if self._dirty:
            return
        v = self.cg.v
        ptr = self.cg.st_ptr(CSR + CSR_MSTATUS)
        mstatus = v(f"load i64, ptr {ptr}")
        dirty = v(f"or i64 {mstatus}, {DIRTY}")
        if when is not None:
            dirty = v(f"select i1 {when}, i64 {dirty}, i64 {mstatus}")
        self.cg.put(f"store i64 {dirty}, ptr {ptr}")

    def fcsr(self) -> str:
        return self.cg.v(f"load i64, ptr {self.cg.st_ptr(CSR + CSR_FCSR)}")

    def raise_nx(self, fcsr: str, inexact: str | Callable[[], str]) -> None:
        """fflags |= NX if `inexact`; a callable emits a costly test only when NX is not set yet."""
        cg, v = self.cg, self.cg.v
        after = None
        if callable(inexact):
            test, after = cg.new_label("nxtest"), cg.new_label("nxdone")
            nx_set = v(f"icmp ne i64 {v(f'and i64 {fcsr}, {NX}')}, 0")
            cg.put(f"br i1 {nx_set}, label %{after}, label %{test}")
            cg.start(test)
            inexact = inexact()
        nx = v(f"zext i1 {inexact} to i64")
        cg.put(f"store i64 {v(f'or i64 {fcsr}, {nx}')}, ptr {cg.st_ptr(CSR + CSR_FCSR)}")
        if after is not None:
            cg.put(f"br label %{after}")
            cg.start(after)

    def rm_allows(self, rm: int, fcsr: str, modes: tuple[int, ...]) -> str | None:
        """i1: the effective rounding mode is one of `modes` (None: statically not)."""
        if rm in modes:
            return "true"
        if rm != DYN:
            return None
        v = self.cg.v
        frm = v(f"and i64 {v(f'lshr i64 {fcsr}, 5')}, 7")
        if len(modes) == 1:
            return v(f"icmp eq i64 {frm}, {modes[0]}")
        return v(f"icmp ule i64 {frm}, {max(modes)}")  # modes = 0..n

    # --- instructions ----------------------------------------------------------------------
    def emit(self, i: int, insn: Insn) -> None:
        op = insn.opcode
        self.fs_on(i)
        if op == FP_LOAD or op == FP_STORE:
            self.memory(i, insn)
            self.done(i, self._dirty or op == FP_LOAD)
            return
        ops = fp_operands(insn)
        assert ops is not None
        fast = self.fast(i, insn, ops)
        if fast is None:
            self.helper(i, insn, ops)
        else:
            ok, write = fast
            cg = self.cg
            slow, go, join = cg.new_label("fpslow"), cg.new_label("fpfast"), cg.new_label("fpjoin")
            cg.put(f"br i1 {cg.v(f'xor i1 {ok}, true')}, label %{slow}, label %{go}, !prof !0")
            cg.start(slow)
            self.helper(i, insn, ops)
            cg.put(f"br label %{join}")
            cg.start(go)
            write()
            cg.put(f"br label %{join}")
            cg.start(join)
        # Both paths leave FS Dirty when they write an F register (the FPU's write_f does).
        self.done(i, self._dirty or ops.fwrite is not None)

    def memory(self, i: int, insn: Insn) -> None:
        cg, v = self.cg, self.cg.v
        size = 4 if insn.f3 == 2 else 8
        if insn.opcode == FP_LOAD:
            addr = v(f"add i64 {cg.get(insn.rs1)}, {insn.imm_i}")
            p = cg.ram_pointer(i, addr, size, 1)
            if size == 4:
                word = v(f"load i32, ptr {p}, align 4")
                bits = v(f"or i64 {v(f'zext i32 {word} to i64')}, {NAN_BOX}")
            else:
                bits = v(f"load i64, ptr {p}, align 8")
            self.fset(insn.rd, bits)
            self.set_dirty()
            return
        addr = v(f"add i64 {cg.get(insn.rs1)}, {insn.imm_s}")
        bits = self.fget(insn.rs2)
        p = cg.ram_pointer(i, addr, size, 2)
        if size == 4:
            bits = v(f"trunc i64 {bits} to i32")
        cg.put(f"store i{8 * size} {bits}, ptr {p}, align {size}")

    def helper(self, i: int, insn: Insn, ops: Operands) -> None:
        """The instruction through the interpreter's FPU, on the registers in st."""
        cg, v = self.cg, self.cg.v
        # One exit before the instruction for both reasons to leave: the FPU
        # not loaded yet (the interpreter runs it) and an illegal instruction
        # (the FPU changed nothing).
        out, call, back = cg.new_label("fpout"), cg.new_label("fpcall"), cg.new_label("fpback")
        fn = v(f"load ptr, ptr {v(f'getelementptr i64, ptr %jt, i64 {JT_FP_ENTRY}')}")
        cg.put(f"br i1 {v(f'icmp eq ptr {fn}, null')}, label %{out}, label %{call}, !prof !0")
        cg.start(out)
        cg.exit_block(cg.cur[i].rel, i)
        cg.start(call)
        for r in ops.freads:
            cg.put(f"store i64 {self.fget(r)}, ptr {cg.st_ptr(F + r)}")
        if ops.xread:
            cg.put(f"store i64 {cg.get(ops.xread)}, ptr {cg.st_ptr(X + ops.xread)}")
        rc = v(f"call i64 {fn}(ptr %st, i64 {insn.bits})")
        cg.put(f"br i1 {v(f'icmp ne i64 {rc}, 0')}, label %{out}, label %{back}, !prof !0")
        cg.start(back)
        if ops.fwrite is not None:
            self.fset(ops.fwrite, v(f"load i64, ptr {cg.st_ptr(F + ops.fwrite)}"))
        if ops.xwrite:
            cg.set(ops.xwrite, v(f"load i64, ptr {cg.st_ptr(X + ops.xwrite)}"))

    def fast(self, i: int, insn: Insn, ops: Operands) -> tuple[str, Callable[[], None]] | None:
        """(condition, writer) of the inline path, or None when there is none.
        The writer stores the result, fflags and mstatus on the fast path."""
        v, m = self.cg.v, self.math
        op, rm, rd = insn.opcode, insn.f3, insn.rd
        dbl = ((insn.bits >> 25) & 3) == 1
        if ((insn.bits >> 25) & 3) > 1:
            return None  # half, quad: illegal
        funct5 = insn.bits >> 27

        def read(r: int) -> tuple[str, str]:
            """(usable, value as double): a single must be NaN-boxed."""
            bits = self.fget(r)
            if dbl:
                return "true", self.as_double(bits)
            return self.single(bits)

        def arith(
            result: str, ok: str, inexact: str | Callable[[], str], fcsr: str, single_result: bool
        ) -> tuple[str, Callable[[], None]]:
            def write() -> None:
                bits = self.box(result) if single_result else v(f"bitcast double {result} to i64")
                self.fset(rd, bits)
                self.raise_nx(fcsr, inexact)
                self.set_dirty()

            return ok, write

        if op in FMA_OPCODES or (op == OP_FP and (funct5 <= 3 or funct5 == 0x0B)):
            if funct5 == 0x0B and insn.rs2 != 0 and op == OP_FP:
                return None
            fcsr = self.fcsr()
            rm_ok = self.rm_allows(rm, fcsr, (RNE,))
            if rm_ok is None:
                return None
            if op in FMA_OPCODES:
                ok_a, a = read(insn.rs1)
                ok_b, b = read(insn.rs2)
                ok_c, c = read(insn.bits >> 27)
                if op in (0x4B, 0x4F):  # fnmsub, fnmadd: -(a*b)
                    a = v(f"fneg double {a}")
                if op in (0x47, 0x4F):  # fmsub, fnmadd: - c
                    c = v(f"fneg double {c}")
                inexact: str | Callable[[], str]
                if dbl:  # ErrFma costs a dozen operations: not when NX is already set
                    r, ok = m.fma_d_result(a, b, c)
                    inexact = lambda a=a, b=b, c=c, r=r: m.fma_d_inexact(a, b, c, r)
                else:
                    r, ok, inexact = m.fma_s(a, b, c)
                ok = m.both(m.both(ok, ok_a), m.both(ok_b, ok_c))
            else:
                ok_a, a = read(insn.rs1)
                if funct5 == 0x0B:
                    ok_b, b = "true", a
                else:
                    ok_b, b = read(insn.rs2)
                if dbl:
                    if funct5 == 1:
                        b = v(f"fneg double {b}")
                    r, ok, inexact = (m.add_d, m.add_d, m.mul_d, m.div_d)[funct5](a, b) if funct5 <= 3 else m.sqrt_d(a)
                else:
                    r, ok, inexact = m.arith_s(funct5, a, b)
                ok = m.both(m.both(ok, ok_a), ok_b)
            return arith(r, m.both(ok, rm_ok), inexact, fcsr, not dbl)
        if op != OP_FP:
            return None
        if funct5 == 0x04 and rm <= 2:  # fsgnj, fsgnjn, fsgnjx: bits only
            a, b = self.fget(insn.rs1), self.fget(insn.rs2)
            sign = -(1 << 63) if dbl else 0x8000_0000
            if not dbl:
                a, b = self.unboxed_bits(a), self.unboxed_bits(b)
            if rm == 0:
                s = v(f"and i64 {b}, {sign}")
            elif rm == 1:
                s = v(f"xor i64 {v(f'and i64 {b}, {sign}')}, {sign}")
            else:
                s = v(f"and i64 {v(f'xor i64 {a}, {b}')}, {sign}")
            r = v(f"or i64 {v(f'and i64 {a}, {~sign}')}, {s}")

            def write_sgnj() -> None:
                self.fset(rd, r if dbl else v(f"or i64 {r}, {NAN_BOX}"))
                self.set_dirty()

            return "true", write_sgnj
        if funct5 == 0x05 and rm <= 1:  # fmin, fmax: ordered operands
            ok_a, a = read(insn.rs1)
            ok_b, b = read(insn.rs2)
            ok = m.both(m.both(ok_a, ok_b), v(f"fcmp ord double {a}, {b}"))
            ta, tb = (self.fget(insn.rs1), self.fget(insn.rs2))
            first = v(f"fcmp {'olt' if rm == 0 else 'ogt'} double {a}, {b}")
            second = v(f"fcmp {'olt' if rm == 0 else 'ogt'} double {b}, {a}")
            # Equal: the same bits, or zeros of both signs (min: -0, max: +0).
            same = v(f"{'or' if rm == 0 else 'and'} i64 {ta}, {tb}")
            r = v(f"select i1 {first}, i64 {ta}, i64 {v(f'select i1 {second}, i64 {tb}, i64 {same}')}")

            def write_minmax() -> None:
                self.fset(rd, r)
                self.set_dirty()

            return ok, write_minmax
        if funct5 == 0x14 and rm <= 2:  # fle, flt, feq: ordered operands, no flags
            ok_a, a = read(insn.rs1)
            ok_b, b = read(insn.rs2)
            ok = m.both(m.both(ok_a, ok_b), v(f"fcmp ord double {a}, {b}"))
            cond = ("ole", "olt", "oeq")[rm]
            r = v(f"zext i1 {v(f'fcmp {cond} double {a}, {b}')} to i64")
            return ok, lambda: self.cg.set(rd, r)
        if funct5 == 0x1C and rm == 0 and insn.rs2 == 0:  # fmv.x.w, fmv.x.d: raw bits
            bits = self.fget(insn.rs1)
            r = bits if dbl else v(f"sext i32 {v(f'trunc i64 {bits} to i32')} to i64")
            return "true", lambda: self.cg.set(rd, r)
        if funct5 == 0x1E and rm == 0 and insn.rs2 == 0:  # fmv.w.x, fmv.d.x
            x = self.cg.get(insn.rs1)
            r = x if dbl else v(f"or i64 {v(f'and i64 {x}, 4294967295')}, {NAN_BOX}")

            def write_mv() -> None:
                self.fset(rd, r)
                self.set_dirty()

            return "true", write_mv
        if funct5 == 0x08 and insn.rs2 == (0 if dbl else 1):  # fcvt.d.s, fcvt.s.d
            fcsr = self.fcsr()
            if dbl:  # exact: any valid rounding mode
                rm_ok = self.rm_allows(rm, fcsr, (0, 1, 2, 3, 4))
                if rm_ok is None:
                    return None
                boxed, x = self.single(self.fget(insn.rs1))
                ok = m.both(m.both(boxed, v(f"fcmp ord double {x}, {x}")), rm_ok)
                return arith(x, ok, "false", fcsr, False)
            rm_ok = self.rm_allows(rm, fcsr, (RNE,))
            if rm_ok is None:
                return None
            x = self.as_double(self.fget(insn.rs1))
            fits = m.within(x, MIN_NORMAL_S, MAX_S, strict_lo=True)
            ok = m.both(v(f"or i1 {fits}, {v(f'fcmp oeq double {x}, {ZERO}')}"), rm_ok)
            r32 = v(f"fptrunc double {x} to float")
            inexact = v(f"fcmp une double {v(f'fpext float {r32} to double')}, {x}")
            return arith(r32, ok, inexact, fcsr, True)
        if funct5 == 0x1A and insn.rs2 <= 3:  # fcvt.fmt.{w,wu,l,lu}
            return self.from_int(i, insn, dbl)
        if funct5 == 0x18 and insn.rs2 <= 3:  # fcvt.{w,wu,l,lu}.fmt
            return self.to_int(i, insn, dbl)
        return None

    def unboxed_bits(self, bits: str) -> str:
        """A single's 32 bits, the canonical NaN when it is not NaN-boxed."""
        v = self.cg.v
        boxed = v(f"icmp eq i64 {v(f'ashr i64 {bits}, 32')}, -1")
        return v(f"select i1 {boxed}, i64 {v(f'and i64 {bits}, 4294967295')}, i64 {CANON_NAN_S}")

    def from_int(self, i: int, insn: Insn, dbl: bool) -> tuple[str, Callable[[], None]] | None:
        v = self.cg.v
        kind = insn.rs2  # w, wu, l, lu
        fcsr = self.fcsr()
        exact = dbl and kind <= 1  # 32-bit integers fit a double
        rm_ok = self.rm_allows(insn.f3, fcsr, (0, 1, 2, 3, 4) if exact else (RNE,))
        if rm_ok is None:
            return None
        x = self.cg.get(insn.rs1)
        signed = kind in (0, 2)
        if kind <= 1:
            x = v(f"{'sext' if signed else 'zext'} i32 {v(f'trunc i64 {x} to i32')} to i64")
        ty = "double" if dbl else "float"
        r = v(f"{'sitofp' if signed else 'uitofp'} i64 {x} to {ty}")
        if exact:
            inexact = "false"
        else:  # inexact iff the magnitude has more significant bits than the format
            mag = v(f"select i1 {v(f'icmp slt i64 {x}, 0')}, i64 {v(f'sub i64 0, {x}')}, i64 {x}") if signed else x
            lead = v(f"call i64 @llvm.ctlz.i64(i64 {mag}, i1 false)")
            trail = v(f"call i64 @llvm.cttz.i64(i64 {mag}, i1 false)")
            bits = v(f"sub i64 {v(f'sub i64 64, {lead}')}, {trail}")
            inexact = v(f"icmp sgt i64 {bits}, {53 if dbl else 24}")

        def write() -> None:
            self.fset(insn.rd, v(f"bitcast double {r} to i64") if dbl else self.box(r))
            self.raise_nx(fcsr, inexact)
            self.set_dirty()

        return rm_ok, write

    def to_int(self, i: int, insn: Insn, dbl: bool) -> tuple[str, Callable[[], None]] | None:
        """fcvt to an integer in RNE or RTZ, for values in range (NaN, overflow: the FPU)."""
        v, m = self.cg.v, self.math
        kind = insn.rs2
        fcsr = self.fcsr()
        rtz = insn.f3 == RTZ
        rm_ok = "true" if rtz else self.rm_allows(insn.f3, fcsr, (RNE,))
        if rm_ok is None:
            return None
        if dbl:
            ok, x = "true", self.as_double(self.fget(insn.rs1))
        else:
            ok, x = self.single(self.fget(insn.rs1))
        if rtz:
            rounded = x  # fptosi truncates
        else:  # round half to even: adding and removing 2**52 rounds in the host's RNE
            magic = v(f"select i1 {v(f'fcmp olt double {x}, {ZERO}')}, double {dconst(-(2.0**52))}, double {TWO52}")
            near = v(f"fsub double {v(f'fadd double {x}, {magic}')}, {magic}")
            small = v(f"fcmp olt double {m.call('fabs', x)}, {TWO52}")
            rounded = v(f"select i1 {small}, double {near}, double {x}")
        # Ranges of the rounded value (RTZ: of x, whose truncation must fit).
        lo, hi = {
            0: (-(2.0**31) - (1 if rtz else 0), 2.0**31 if rtz else 2.0**31 - 1),
            1: (-1.0 if rtz else 0.0, 2.0**32 if rtz else 2.0**32 - 1),
            2: (-(2.0**63), 2.0**63),
            3: (0.0, 2.0**64),
        }[kind]
        lo_cmp = "ogt" if rtz and kind <= 1 else "oge"
        hi_cmp = "olt" if rtz or kind >= 2 else "ole"
        in_range = m.both(v(f"fcmp {lo_cmp} double {rounded}, {dconst(lo)}"),
                          v(f"fcmp {hi_cmp} double {rounded}, {dconst(hi)}"))  # fmt: skip
        ok = m.both(m.both(ok, in_range), rm_ok)
        # Out-of-range values must not reach fptosi (poison): convert a safe value then.
        safe = v(f"select i1 {in_range}, double {rounded}, double {ZERO}")
        if kind == 3:
            r = v(f"fptoui double {safe} to i64")
            back = v(f"uitofp i64 {r} to double")
        else:
            r = v(f"fptosi double {safe} to i64")
            back = v(f"sitofp i64 {r} to double")
        if kind <= 1:
            r = v(f"sext i32 {v(f'trunc i64 {r} to i32')} to i64")
        inexact = v(f"fcmp une double {back}, {x}")

        def write() -> None:
            self.cg.set(insn.rd, r)
            self.raise_nx(fcsr, inexact)
            self.set_dirty(when=inexact)  # only raised flags make FS Dirty

        return ok, write
