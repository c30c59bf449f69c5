"""Seeded random instruction sequences for differential testing.

`generate(seed, n)` returns the assembly source of a guest program (linked
with the runtime like any other) that initialises every register to a
random value, runs `n` random groups of valid RV64IMAC (+F/D) instructions,
and dumps x1..x31, f0..f31, fflags and a digest of its scratch memory over
the UART.  The same seed always gives the same program, so QEMU and
pocketvm can be compared on it byte for byte.

Constraints that keep every run defined and identical on any correct
implementation:
  * gp (x3) points just past a 2 KiB scratch buffer and is never written;
    sp (x2) points into the same buffer during the random block (for the
    c.*sp forms) and is never written either.  Memory accesses are naturally
    aligned and stay inside the buffer (misaligned accesses are
    implementation-defined).
  * Control flow only goes forward, to the start of a later group, so the
    block always terminates; no instruction traps.
  * No SC (its success is not architecturally guaranteed), no counters or
    timers, frm only ever holds a valid rounding mode.

Run as a script to print a program:  randgen.py SEED [N]
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

SCRATCH = 2048  # bytes below gp
STACK_BELOW_GP = 1024  # sp = gp - 1024 during the block; c.*sp offsets reach 504 above

XDST = [1] + list(range(4, 32))  # writable: not x0, sp, gp
XSRC = list(range(32))
XC = list(range(8, 16))  # registers of the compressed 3-bit fields
FREGS = list(range(32))
FC = list(range(8, 16))
RMS = ["rne", "rtz", "rdn", "rup", "rmm", "dyn"]

SPECIAL_INTS = [
    0, 1, 2, -1, -2, 31, 32, 63, 64, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000000,
    0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFFFFF80000000, 0x00000000FFFFFFFE,
]
SPECIAL_SINGLES = [
    0x00000000, 0x80000000, 0x3F800000, 0xBF800000, 0x00000001, 0x807FFFFF, 0x00800000,
    0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0x4F000000, 0x3EAAAAAB,
]
SPECIAL_DOUBLES = [
    0x0000000000000000, 0x8000000000000000, 0x3FF0000000000000, 0xBFF0000000000000,
    0x0000000000000001, 0x800FFFFFFFFFFFFF, 0x0010000000000000, 0x7FEFFFFFFFFFFFFF,
    0x7FF0000000000000, 0xFFF0000000000000, 0x7FF8000000000000, 0x7FF0000000000001,
    0x43E0000000000000, 0x41E0000000000000, 0x3FD5555555555555,
]

M64 = (1 << 64) - 1


def x(r: int) -> str:
    return f"x{r}"


def f(r: int) -> str:
    return f"f{r}"


class Gen:
    """Builds the program one group of instructions at a time."""

    def __init__(self, seed: int, n: int, fp: bool):
        self.r = random.Random(seed)
        self.n = n
        self.fp = fp
        self.groups: list[list[str]] = []

    # --- random operands ------------------------------------------------
    def int_value(self) -> int:
        k = self.r.random()
        if k < 0.3:
            return self.r.choice(SPECIAL_INTS) & M64
        if k < 0.5:
            return self.r.randint(-1000, 1000) & M64
        return self.r.getrandbits(64)

    def fp_value(self) -> int:
        k = self.r.random()
        if k < 0.3:
            return 0xFFFFFFFF00000000 | self.r.choice(SPECIAL_SINGLES)
        if k < 0.45:
            return 0xFFFFFFFF00000000 | self.r.getrandbits(32)
        if k < 0.75:
            return self.r.choice(SPECIAL_DOUBLES)
        if k < 0.8:
            return self.r.getrandbits(64)  # almost never a boxed single
        # a double of moderate size: interesting rounding, few overflows
        return (self.r.getrandbits(1) << 63) | (self.r.randint(0x3C0, 0x440) << 52) | self.r.getrandbits(52)

    def xd(self) -> int:
        return self.r.choice(XDST)

    def xs(self) -> int:
        return self.r.choice(XSRC)

    def imm12(self) -> int:
        return self.r.choice([0, 1, -1, 2047, -2048, self.r.randint(-2048, 2047), self.r.randint(-16, 16)])

    def mem_off(self, width: int, span: int = 0) -> int:
        """A gp-relative offset inside the scratch buffer, aligned to width,
        leaving `span` bytes above it inside the buffer too."""
        lo = -SCRATCH // width
        hi = -(span + width) // width
        return self.r.randint(lo, hi) * width

    def label(self, group: int) -> str:
        return f".Lg{group}" if group < self.n else ".Lend"

    def forward(self) -> str:
        """A label 1..8 groups ahead (or the end)."""
        return self.label(min(self.n, len(self.groups) + self.r.randint(1, 8)))

    # --- instruction groups ------------------------------------------------
    def g_rtype(self) -> list[str]:
        op = self.r.choice(
            "add sub sll slt sltu xor srl sra or and addw subw sllw srlw sraw "
            "mul mulh mulhsu mulhu div divu rem remu mulw divw divuw remw remuw".split()
        )
        return [f"{op} {x(self.xd())}, {x(self.xs())}, {x(self.xs())}"]

    def g_itype(self) -> list[str]:
        op = self.r.choice("addi slti sltiu xori ori andi addiw slli srli srai slliw srliw sraiw".split())
        if op in ("slli", "srli", "srai"):
            imm = self.r.choice([0, 1, 31, 32, 63, self.r.randint(0, 63)])
        elif op.endswith("iw") and op != "addiw":
            imm = self.r.choice([0, 1, 31, self.r.randint(0, 31)])
        else:
            imm = self.imm12()
        return [f"{op} {x(self.xd())}, {x(self.xs())}, {imm}"]

    def g_upper(self) -> list[str]:
        op = self.r.choice(["lui", "auipc"])
        imm = self.r.choice([0, 1, 0x80000, 0xFFFFF, self.r.randint(0, 0xFFFFF)])
        return [f"{op} {x(self.xd())}, {imm}"]

    def g_load(self) -> list[str]:
        op, w = self.r.choice([("lb", 1), ("lbu", 1), ("lh", 2), ("lhu", 2), ("lw", 4), ("lwu", 4), ("ld", 8)])
        return [f"{op} {x(self.xd())}, {self.mem_off(w)}(gp)"]

    def g_store(self) -> list[str]:
        op, w = self.r.choice([("sb", 1), ("sh", 2), ("sw", 4), ("sd", 8)])
        return [f"{op} {x(self.xs())}, {self.mem_off(w)}(gp)"]

    def g_amo(self) -> list[str]:
        w = self.r.choice(["w", "d"])
        addr = self.xd()
        order = self.r.choice(["", ".aq", ".rl", ".aqrl"])
        first = f"addi {x(addr)}, gp, {self.mem_off(8 if w == 'd' else 4)}"
        if self.r.random() < 0.15:
            return [first, f"lr.{w}{order} {x(self.xd())}, ({x(addr)})"]
        op = self.r.choice("swap add xor and or min max minu maxu".split())
        return [first, f"amo{op}.{w}{order} {x(self.xd())}, {x(self.xs())}, ({x(addr)})"]

    def g_branch(self) -> list[str]:
        op = self.r.choice("beq bne blt bge bltu bgeu".split())
        a = self.xs()
        b = a if self.r.random() < 0.1 else self.xs()
        return [f"{op} {x(a)}, {x(b)}, {self.forward()}"]

    def g_jump(self) -> list[str]:
        target = self.forward()
        k = self.r.random()
        if k < 0.4:
            return [f"jal {x(self.r.choice([0] + XDST))}, {target}"]
        if k < 0.6:
            return [f"c.j {target}"]
        t = self.xd()
        if k < 0.8:
            # jalr ignores bit 0 of the sum
            return [f"lla {x(t)}, {target}", f"addi {x(t)}, {x(t)}, -1", f"jalr {x(self.xd())}, 1({x(t)})"]
        return [f"lla {x(t)}, {target}", f"c.{self.r.choice(['jr', 'jalr'])} {x(t)}"]

    def g_compressed(self) -> list[str]:
        r = self.r
        c3 = lambda: x(r.choice(XC))  # noqa: E731
        nz6 = lambda: r.choice([v for v in range(-32, 32) if v])  # noqa: E731
        k = r.randrange(17)
        if k == 0:
            return [f"c.addi {x(self.xd())}, {nz6()}"]
        if k == 1:
            return [f"c.addiw {x(self.xd())}, {r.randint(-32, 31)}"]
        if k == 2:
            return [f"c.li {x(self.xd())}, {r.randint(-32, 31)}"]
        if k == 3:
            rd = r.choice([v for v in XDST if v != 2])
            return [f"c.lui {x(rd)}, {r.choice([r.randint(1, 31), r.randint(0xFFFE0, 0xFFFFF)])}"]
        if k == 4:
            return [f"c.slli {x(self.xd())}, {r.randint(1, 63)}"]
        if k == 5:
            return [f"c.{r.choice(['srli', 'srai'])} {c3()}, {r.randint(1, 63)}"]
        if k == 6:
            return [f"c.andi {c3()}, {r.randint(-32, 31)}"]
        if k == 7:
            return [f"c.{r.choice(['sub', 'xor', 'or', 'and', 'subw', 'addw'])} {c3()}, {c3()}"]
        if k == 8:
            return [f"c.{r.choice(['mv', 'add'])} {x(self.xd())}, {x(r.choice(XSRC[1:]))}"]
        if k == 9:
            return [f"c.addi4spn {c3()}, sp, {r.randint(1, 255) * 4}"]
        if k in (10, 11):
            base = r.choice(XC)
            op, w, top = r.choice([("c.lw", 4, 124), ("c.ld", 8, 248), ("c.sw", 4, 124), ("c.sd", 8, 248)])
            return [
                f"addi {x(base)}, gp, {self.mem_off(8, 256)}",
                f"{op} {c3()}, {r.randint(0, top // w) * w}({x(base)})",
            ]
        if k == 12:
            op, w, top = r.choice([("c.lwsp", 4, 252), ("c.ldsp", 8, 504)])
            return [f"{op} {x(self.xd())}, {r.randint(0, top // w) * w}(sp)"]
        if k == 13:
            op, w, top = r.choice([("c.swsp", 4, 252), ("c.sdsp", 8, 504)])
            return [f"{op} {x(self.xs())}, {r.randint(0, top // w) * w}(sp)"]
        if k == 14:
            return [f"c.{r.choice(['beqz', 'bnez'])} {c3()}, {self.forward()}"]
        if k == 15:
            return ["c.nop"]
        return [f"c.{r.choice(['mv', 'add'])} {x(self.xd())}, {x(r.choice(XSRC[1:]))}"]

    def g_csr(self) -> list[str]:
        r = self.r
        k = r.randrange(4)
        if k == 0:
            csr = r.choice(["mscratch", "sscratch"])
            op = r.choice(["csrrw", "csrrs", "csrrc"])
            return [f"{op} {x(self.xd())}, {csr}, {x(self.xs())}"]
        if k == 1:
            csr = r.choice(["mscratch", "sscratch"])
            op = r.choice(["csrrwi", "csrrsi", "csrrci"])
            return [f"{op} {x(self.xd())}, {csr}, {r.randint(0, 31)}"]
        if k == 2:
            return [f"csrrwi {x(self.xd())}, frm, {r.randint(0, 4)}"] if self.fp else ["fence"]
        return [f"csrrs {x(self.xd())}, fflags, x0"] if self.fp else ["fence rw, rw"]

    def g_fp(self) -> list[str]:
        r = self.r
        s = r.choice(["s", "d"])
        fd, fa, fb, fc = (r.choice(FREGS) for _ in range(4))
        rm = r.choice(RMS)
        k = r.randrange(12)
        if k == 0:
            op = r.choice(["fadd", "fsub", "fmul", "fdiv"])
            return [f"{op}.{s} {f(fd)}, {f(fa)}, {f(fb)}, {rm}"]
        if k == 1:
            return [f"fsqrt.{s} {f(fd)}, {f(fa)}, {rm}"]
        if k == 2:
            op = r.choice(["fmin", "fmax", "fsgnj", "fsgnjn", "fsgnjx"])
            return [f"{op}.{s} {f(fd)}, {f(fa)}, {f(fb)}"]
        if k == 3:
            op = r.choice(["fmadd", "fmsub", "fnmadd", "fnmsub"])
            return [f"{op}.{s} {f(fd)}, {f(fa)}, {f(fb)}, {f(fc)}, {rm}"]
        if k == 4:
            op = r.choice(["feq", "flt", "fle"])
            return [f"{op}.{s} {x(self.xd())}, {f(fa)}, {f(fb)}"]
        if k == 5:
            return [f"fclass.{s} {x(self.xd())}, {f(fa)}"]
        if k == 6:
            it = r.choice(["w", "wu", "l", "lu"])
            return [f"fcvt.{it}.{s} {x(self.xd())}, {f(fa)}, {rm}"]
        if k == 7:
            it = r.choice(["w", "wu", "l", "lu"])
            exact = s == "d" and it in ("w", "wu")
            return [f"fcvt.{s}.{it} {f(fd)}, {x(self.xs())}" + ("" if exact else f", {rm}")]
        if k == 8:
            return [r.choice([f"fcvt.s.d {f(fd)}, {f(fa)}, {rm}", f"fcvt.d.s {f(fd)}, {f(fa)}"])]
        if k == 9:
            return [
                r.choice(
                    [
                        f"fmv.x.w {x(self.xd())}, {f(fa)}",
                        f"fmv.x.d {x(self.xd())}, {f(fa)}",
                        f"fmv.w.x {f(fd)}, {x(self.xs())}",
                        f"fmv.d.x {f(fd)}, {x(self.xs())}",
                    ]
                )
            ]
        if k == 10:
            w = 4 if s == "s" else 8
            op = r.choice([f"fl{'w' if w == 4 else 'd'}", f"fs{'w' if w == 4 else 'd'}"])
            return [f"{op} {f(fd)}, {self.mem_off(w)}(gp)"]
        op = r.choice(["c.fld", "c.fsd", "c.fldsp", "c.fsdsp"])
        if op.endswith("sp"):
            return [f"{op} {f(fd)}, {r.randint(0, 63) * 8}(sp)"]
        base = r.choice(XC)
        return [f"addi {x(base)}, gp, {self.mem_off(8, 256)}", f"{op} {f(r.choice(FC))}, {r.randint(0, 31) * 8}({x(base)})"]

    # --- program ------------------------------------------------------------
    def block(self) -> None:
        kinds = [
            (self.g_rtype, 18), (self.g_itype, 14), (self.g_upper, 3), (self.g_load, 7), (self.g_store, 6),
            (self.g_amo, 5), (self.g_branch, 6), (self.g_jump, 3), (self.g_compressed, 16), (self.g_csr, 2),
        ]
        if self.fp:
            kinds.append((self.g_fp, 20))
        funcs, weights = zip(*kinds)
        while len(self.groups) < self.n:
            self.groups.append(self.r.choices(funcs, weights)[0]())

    def source(self) -> str:
        self.block()
        out = [
            f"/* Generated by randgen.py: seed {self.seed_desc}, {self.n} groups. */",
            "    .text",
            "    .globl main",
            "main:",
            "    lla gp, rand_gp_base",
            "    sd sp, 0(gp)",  # the real stack pointer, restored at the end
            f"    addi sp, gp, -{STACK_BELOW_GP}",
        ]
        if self.fp:
            out += ["    lla t0, rand_fp_init"] + [f"    fld f{i}, {8 * i}(t0)" for i in range(32)]
            out.append(f"    li t0, {self.r.randint(0, 4) << 5}")
            out.append("    fscsr t0")
        for reg in XDST:
            out.append(f"    li x{reg}, {self.int_value():#x}")
        for i, group in enumerate(self.groups):
            out.append(f".Lg{i}:")
            out += [f"    {line}" for line in group]
        out.append(".Lend:")
        out += [f"    sd x{i}, {8 * i}(gp)" for i in range(1, 32) if i not in (2, 3)]
        out += ["    sd sp, 16(gp)", "    sd gp, 24(gp)"]
        if self.fp:
            out += [f"    fsd f{i}, {8 * (32 + i)}(gp)" for i in range(32)]
            out += ["    frflags t0", f"    sd t0, {8 * 64}(gp)"]
        else:
            out += [f"    sd zero, {8 * (32 + i)}(gp)" for i in range(33)]
        out += [
            "    ld sp, 0(gp)",
            "    mv a0, gp",
            "    lla a1, rand_scratch",
            f"    li a2, {SCRATCH}",
            "    call rand_dump",
            "",
            "    .data",
            "    .balign 4096",
            "rand_scratch:",
        ]
        words = [self.r.getrandbits(64) for _ in range(SCRATCH // 8)]
        out += [f"    .8byte {w:#018x}" for w in words]
        out += ["rand_gp_base:", f"    .zero {8 * 65}", "    .balign 8", "rand_fp_init:"]
        out += [f"    .8byte {self.fp_value():#018x}" for _ in range(32)]
        out.append("")
        return "\n".join(out)


def generate(seed: int, n: int = 400, fp: bool = True) -> str:
    """Assembly source of the random program for (seed, n, fp)."""
    g = Gen(seed, n, fp)
    g.seed_desc = str(seed)
    return g.source()


def write(seed: int, out_dir: Path, n: int = 400, fp: bool = True) -> Path:
    """Write the program as out_dir/rand_<seed>_<n>[_nofp].S, leaving an
    unchanged file alone so incremental builds stay incremental."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"rand_{seed}_{n}{'' if fp else '_nofp'}.S"
    text = generate(seed, n, fp)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: randgen.py SEED [N]")
    print(generate(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) == 3 else 400))
