"""x86-64 assembly for one region: the quick tier's cheap path.

LLVM's quick tier (`codegen` at -O0) costs ~3.5 ms of the service's CPU
per region, and in a cold boot the service was the bottleneck: hundreds of
hot blocks waited for it while the hart interpreted them. Most regions are
only integer arithmetic, loads, stores, jumps and atomics; for those this
module writes the machine code as assembly text, one fixed pattern per
instruction, which `x86` turns into the object (no LLVM at all: ~1.1 ms
a region of 45 instructions). The function is the one `codegen` makes, to the same contract
(`native_call`): same arguments, same exits, same instruction counts, the
same check of its code at entry, chaining through the table and counting
in JT_HOT as code compiled quickly does. Regions with F/D instructions
are left to `codegen`.

Registers: the arguments stay where the call put them (rdi st, rsi ram,
rdx ram_size, rcx pc, r8 and r9 the data translation flag and tag; on the
stack maxn, done, jt, off), guest registers stay in `st`, and rax, r10 and
r11 are the scratch registers. The function calls nothing, so it has no
frame: `done` is counted in its own argument slot, and the red zone below
rsp holds the JT_HOT pointer and what a division or a chaining look-up
needs to set aside. Chaining rewrites the slots of `done` and `off` and
jumps: the tail call that `codegen`'s musttail makes.
"""

from __future__ import annotations

from pocketvm.cpu.state import (
    CSR,
    CSR_MSTATUS,
    CSR_SATP,
    PC,
    PRIV,
    RAM_BASE,
    RESERVATION,
    TLB,
    TLB_ENTRIES,
)
from pocketvm.cpu.tier1.codegen import budget_checks, code_runs
from pocketvm.cpu.tier1.decode import Insn, Region
from pocketvm.cpu.tier1.layout import JT_FN, JT_HOT, JT_KEY, SET_BITS, SETS, WAYS

_ACC_LOAD = 1
_ACC_STORE = 2
_ASSEMBLED = frozenset((0x13, 0x1B, 0x33, 0x3B, 0x37, 0x17, 0x03, 0x23, 0x0F, 0x6F, 0x67, 0x63, 0x2F))
_AMO_ARITH = {0x00: "add", 0x04: "xor", 0x0C: "and", 0x08: "or"}  # by funct5
_AMO_KEEP_OLD = {0x10: "cmovl", 0x14: "cmovg", 0x18: "cmovb", 0x1C: "cmova"}  # min max minu maxu: old wins when
_JCC = {0: "je", 1: "jne", 4: "jl", 5: "jge", 6: "jb", 7: "jae"}
_MAXN, _DONE, _JT, _OFF = "qword ptr [rsp + 8]", "qword ptr [rsp + 16]", "qword ptr [rsp + 24]", "qword ptr [rsp + 32]"
_HOT, _SAVE, _SAVE2 = "qword ptr [rsp - 8]", "qword ptr [rsp - 16]", "qword ptr [rsp - 24]"
_LOAD = {  # f3 -> the move that loads and extends into rax
    0: "movsx rax, byte ptr", 1: "movsx rax, word ptr", 2: "movsxd rax, dword ptr", 3: "mov rax, qword ptr",
    4: "movzx eax, byte ptr", 5: "movzx eax, word ptr", 6: "mov eax, dword ptr",
}
_STORE = {0: ("byte", "r10b"), 1: ("word", "r10w"), 2: ("dword", "r10d"), 3: ("qword", "r10")}
assert WAYS == 2  # the table's second way is the slot after the first


def can_assemble(region: Region, bmi2: bool) -> bool:
    """Whether this module writes the region's code (shifts by a register
    need BMI2's shlx/shrx/sarx, which leave rcx alone)."""
    return all(i.opcode in _ASSEMBLED and (bmi2 or not _shifts_by_register(i)) for i in region.insns)


def _shifts_by_register(insn: Insn) -> bool:
    return insn.opcode in (0x33, 0x3B) and insn.f3 in (1, 5) and insn.f7 in (0, 0x20)


def x(r: int) -> str:
    return f"qword ptr [rdi + {8 * r}]"


class AsmCodegen:
    """The assembly of one function for the region at RAM offset `off` (see `codegen.BlockCodegen`)."""

    def __init__(self, name: str, off: int, paged: bool, region: Region, count: bool = True):
        self.name = name
        self.off = off & 0xFFF
        self.paged = paged
        self.region = region
        self.count = count
        self.lines: list[str] = []
        self.run: list[str] = []  # instructions not yet in `lines`, up to the next label or jump
        self.cold: list[str] = []  # exits, after the body
        self.n = 0
        self.cur: list[Insn] = []

    def put(self, *lines: str) -> None:
        """Instructions between labels and jumps go into `lines` as one
        line, "; "-separated: `x86` encodes a line it has seen before by
        looking it up, and these runs repeat (a load's TLB look-up, say)."""
        for line in lines:
            if line[-1] == ":" or line[0] in "j.":
                self.end_run()
                self.lines.append(line)
            else:
                self.run.append(line)

    def end_run(self) -> None:
        if self.run:
            self.lines.append("; ".join(self.run))
            self.run = []

    def label(self, hint: str) -> str:
        self.n += 1
        return f".L{self.name}_{hint}{self.n}"

    def block_label(self, rel: int) -> str:
        return f".L{self.name}_b{rel}".replace("-", "m")

    def get(self, reg: str, r: int) -> None:
        """Guest register x`r` into host register `reg` (64-bit name)."""
        if r == 0:
            self.put(f"xor {_low32(reg)}, {_low32(reg)}")
        else:
            self.put(f"mov {reg}, {x(r)}")

    def set_rax(self, r: int) -> None:
        if r:
            self.put(f"mov {x(r)}, rax")

    # --- exits ------------------------------------------------------------------------
    # An exit adds what it retired to `done`, puts the distance of the next
    # pc from %pc in r10 and jumps to one of three tails: plain (back to the
    # interpreter), page (chain to the block at that distance in this page)
    # and lookup (chain to the block at the next pc through the fetch TLB).
    def _exit(self, delta: int | None, retired: int, kind: str, cold: bool) -> None:
        code = [f"add {_DONE}, {retired}"] if retired else []
        if delta is not None:
            code.append(f"mov r10, {delta}")
        code.append(f"jmp .L{self.name}_{kind}")
        if cold:
            out = self.label("x")
            self.cold.extend([f"{out}:", *code])
            return
        self.put(*code)

    def exit_to(self, target_rel: int, retired: int) -> None:
        in_page = 0 <= self.off + target_rel < 0x1000
        self._exit(target_rel, retired, "page" if in_page else "lookup", cold=False)

    def side_exit(self, jcc: str, index: int) -> None:
        """Leave before instruction `index` of the current sub-block when `jcc` jumps."""
        out = self.label("x")
        self.put(f"{jcc} {out}")
        retired = index
        code = [f"add {_DONE}, {retired}"] if retired else []
        self.cold.extend([f"{out}:", *code, f"mov r10, {self.cur[index].rel}", f"jmp .L{self.name}_plain"])

    def goto(self, target_rel: int, retired: int) -> None:
        if target_rel not in self.region.blocks:
            self.exit_to(target_rel, retired)
            return
        if retired:
            self.put(f"add {_DONE}, {retired}")
        self.put(f"jmp {self.block_label(target_rel)}")

    def tails(self) -> None:
        """The three tails every exit ends in (r10: the next pc's distance from %pc)."""
        L = f".L{self.name}_"
        self.put(
            f"{L}plain:",
            "add r10, rcx",
            f"mov qword ptr [rdi + {8 * PC}], r10",
            f"mov rax, {_DONE}",
            "ret",
            f"{L}page:",
            f"mov r11, {_OFF}",
            "add r11, r10",
            f"jmp {L}table",
            # The block at the next pc, found as the interpreter's fetch does:
            # untranslated in M-mode or without paging, else through the fetch TLB.
            f"{L}lookup:",
            "lea r11, [rcx + r10]",
            f"cmp qword ptr [rdi + {8 * PRIV}], 3",
            f"je {L}bare",
            f"mov rax, qword ptr [rdi + {8 * (CSR + CSR_SATP)}]",
            "shr rax, 60",
            f"jz {L}bare",
            f"mov {_SAVE}, r10",
            f"mov {_SAVE2}, r8",
            "mov rax, r11",
            "shr rax, 11",
            f"and eax, {2 * TLB_ENTRIES - 2}",
            f"mov r10, qword ptr [rdi + {8 * (CSR + CSR_MSTATUS)}]",
            "mov r8, r10",
            "shr r10, 17",
            "and r10d, 2",  # SUM (bit 18) -> bit 1
            "shr r8, 19",
            "and r8d, 1",  # MXR (bit 19) -> bit 0
            "or r10, r8",
            f"mov r8, qword ptr [rdi + {8 * PRIV}]",
            "shl r8, 2",
            "or r10, r8",
            "mov r8, r11",
            "and r8, -4096",
            "or r10, r8",
            f"cmp qword ptr [rdi + rax * 8 + {8 * TLB}], r10",
            f"mov r8, {_SAVE2}",
            f"mov r10, {_SAVE}",
            f"jne {L}plain",
            "and r11d, 4095",
            f"add r11, qword ptr [rdi + rax * 8 + {8 * (TLB + 1)}]",
            f"jmp {L}table",
            f"{L}bare:",
            f"mov eax, {RAM_BASE}",
            "sub r11, rax",
            "cmp r11, rdx",
            f"jae {L}plain",
            # r11: the RAM offset of the next pc; chain to its block if the table has one.
            f"{L}table:",
            f"mov {_SAVE}, r10",
            f"lea r10, [r11 + r11 + {int(self.paged)}]",
            *_table_slot("r11", "r10", f"{L}found", f"{L}unchained"),
            f"{L}found:",
            f"mov rax, qword ptr [rax + {8 * (JT_FN - JT_KEY)}]",
            "test rax, rax",
            f"jz {L}unchained",
            f"add rcx, {_SAVE}",
            f"mov {_OFF}, r11",
            "jmp rax",
            f"{L}unchained:",
            f"mov r10, {_SAVE}",
            f"jmp {L}plain",
        )

    # --- the function ----------------------------------------------------------------
    def emit(self) -> str:
        L = f".L{self.name}_"
        self.put(".p2align 4", f".globl {self.name}", f".type {self.name},@function", f"{self.name}:")
        self.put(f"mov r10, {_OFF}", "lea r11, [rsi + r10]")
        # The code must still be what it was translated from: compared 8 bytes
        # at a time. (Lines of their own, not a run: each is one of a kind.)
        self.end_run()
        lines = self.lines
        stale = f"jne {L}stale"
        for rel, code in code_runs(self.region.insns):
            at = 0
            while at < len(code):
                size = next(n for n in (8, 4, 2) if n <= len(code) - at)
                want = int.from_bytes(code[at : at + size], "little", signed=True)
                if size == 8:
                    lines += (f"movabs rax, {want}", f"cmp qword ptr [r11 + {rel + at}], rax", stale)
                else:
                    lines += (f"cmp {'dword' if size == 4 else 'word'} ptr [r11 + {rel + at}], {want}", stale)
                at += size
        if self.count:  # JT_HOT of this block's slot: each budget check adds what it checked
            self.put(f"lea rax, [r10 + r10 + {int(self.paged)}]", "mov r11, rax")
            self.put(*_table_slot("r10", "r11", f"{L}hot", f"{L}hot"))
            self.put(f"{L}hot:", f"add rax, {8 * (JT_HOT - JT_KEY)}", f"mov {_HOT}, rax")
        checks = budget_checks(self.region)
        if next(iter(self.region.blocks)) != 0:
            self.put(f"jmp {self.block_label(0)}")  # (sub-blocks come in address order: some before the entry)
        for start, sub in self.region.blocks.items():
            self.put(f"{self.block_label(start)}:")
            self.cur = sub.insns
            if start in checks:
                # Not enough budget left for what may run before the next check:
                # the interpreter goes on from here.
                self.put(f"mov rax, {_DONE}", f"add rax, {checks[start]}", f"cmp rax, {_MAXN}")
                self.side_exit("jg", 0)
                if self.count:
                    self.put(f"mov rax, {_HOT}", f"add qword ptr [rax], {checks[start]}")
            for i, insn in enumerate(sub.insns):
                if not self.emit_insn(i, insn):
                    break
            else:
                assert sub.next_rel is not None
                self.goto(sub.next_rel, len(sub.insns))
        self.end_run()
        self.lines += self.cold  # (lines of their own: exits to one of a kind pcs do not repeat as runs)
        self.put(
            f"{L}stale:",  # -1 tells the interpreter to drop it; a chaining block gets its own count back
            f"mov qword ptr [rdi + {8 * PC}], rcx",
            f"mov rax, {_DONE}",
            "mov r10, -1",
            "test rax, rax",
            "cmovz rax, r10",
            "ret",
        )
        self.tails()
        self.put(f".size {self.name}, .-{self.name}")
        return "\n".join(self.lines)

    # --- memory ----------------------------------------------------------------------
    def ram_offset(self, i: int, size: int, acc: int) -> None:
        """rax: a guest address -> r11: its RAM offset, or a side exit before
        instruction `i` (misaligned, TLB miss or no RAM, a store into this code's page)."""
        if self.paged:
            table = TLB + acc * 2 * TLB_ENTRIES
            self.put("mov r10, rax", "shr r10, 11", f"and r10d, {2 * TLB_ENTRIES - 2}")
            self.put("mov r11, rax", "and r11, -4096", "or r11, r9", f"cmp r11, qword ptr [rdi + r10 * 8 + {8 * table}]")
            self.side_exit("jne", i)
            if size > 1:
                self.put(f"test al, {size - 1}")
                self.side_exit("jnz", i)
            self.put("mov r11, rax", "and r11d, 4095", f"add r11, qword ptr [rdi + r10 * 8 + {8 * (table + 1)}]")
        else:
            if size > 1:
                self.put(f"test al, {size - 1}")
                self.side_exit("jnz", i)
            self.put(f"mov r10d, {RAM_BASE}", "mov r11, rax", "sub r11, r10", "cmp r11, rdx")
            self.side_exit("jae", i)
        if acc == _ACC_STORE:
            self.put("mov r10, r11", "shr r10, 12", f"mov rax, {_OFF}", "shr rax, 12", "cmp r10, rax")
            self.side_exit("je", i)

    # --- instructions ------------------------------------------------------------------
    def emit_insn(self, i: int, insn: Insn) -> bool:
        """One instruction; False when it ended the sub-block (a jump or branch)."""
        op, f3, rd = insn.opcode, insn.f3, insn.rd
        put = self.put
        if op == 0x13:
            if rd:
                self.get("rax", insn.rs1)
                imm = insn.imm_i
                if f3 == 0:
                    put(f"add rax, {imm}")
                elif f3 == 1:
                    put(f"shl rax, {imm & 63}")
                elif f3 in (2, 3):
                    put(f"cmp rax, {imm}", f"{'setl' if f3 == 2 else 'setb'} al", "movzx eax, al")
                elif f3 == 5:
                    put(f"{'sar' if (insn.bits >> 30) & 1 else 'shr'} rax, {imm & 63}")
                else:
                    put(f"{ {4: 'xor', 6: 'or', 7: 'and'}[f3]} rax, {imm}")
                self.set_rax(rd)
        elif op == 0x1B:
            if rd:
                self.get("rax", insn.rs1)
                if f3 == 0:
                    put(f"add eax, {insn.imm_i}")
                elif f3 == 1:
                    put(f"shl eax, {insn.rs2}")
                else:
                    put(f"{'shr' if insn.f7 == 0 else 'sar'} eax, {insn.rs2}")
                put("movsxd rax, eax")
                self.set_rax(rd)
        elif op in (0x33, 0x3B):
            if rd:
                self.get("rax", insn.rs1)
                self.get("r10", insn.rs2)
                if op == 0x33:
                    self.op(insn)
                else:
                    self.op32(insn)
                    put("movsxd rax, eax")
                self.set_rax(rd)
        elif op == 0x37:
            if rd:
                put(f"mov rax, {insn.imm_u}")
                self.set_rax(rd)
        elif op == 0x17:
            if rd:
                self.pc_plus(insn.rel + insn.imm_u)
                self.set_rax(rd)
        elif op == 0x03:
            self.get("rax", insn.rs1)
            put(f"add rax, {insn.imm_i}")
            self.ram_offset(i, 1 << (f3 & 3), _ACC_LOAD)
            put(f"{_LOAD[f3]} [rsi + r11]")
            self.set_rax(rd)
        elif op == 0x23:
            self.get("rax", insn.rs1)
            put(f"add rax, {insn.imm_s}")
            self.ram_offset(i, 1 << f3, _ACC_STORE)
            width, reg = _STORE[f3]
            self.get("r10", insn.rs2)
            put(f"mov {width} ptr [rsi + r11], {reg}")
        elif op == 0x0F:
            pass  # fence: nothing to order in a single-threaded emulator
        elif op == 0x2F:
            self.amo(i, insn)
        elif op == 0x6F:
            if rd:
                self.pc_plus(insn.rel + insn.length)
                self.set_rax(rd)
            self.goto(insn.rel + insn.imm_j, i + 1)
            return False
        elif op == 0x67:
            self.get("r10", insn.rs1)
            put(f"add r10, {insn.imm_i}", "and r10, -2", "sub r10, rcx")  # (before rd: it may be rs1)
            if rd:
                self.pc_plus(insn.rel + insn.length)
                self.set_rax(rd)
            put(f"add {_DONE}, {i + 1}", f"jmp .L{self.name}_lookup")
            return False
        elif op == 0x63:
            self.get("rax", insn.rs1)
            if insn.rs2:
                put(f"cmp rax, {x(insn.rs2)}")
            else:
                put("cmp rax, 0")
            taken = self.label("t")
            put(f"{_JCC[f3]} {taken}")
            self.goto(insn.rel + insn.length, i + 1)
            put(f"{taken}:")
            self.goto(insn.rel + insn.imm_b, i + 1)
            return False
        else:  # `can_assemble` lets through only what is handled above
            raise AssertionError(f"instruction {insn.bits:#010x} is not assembled")
        return True

    def amo(self, i: int, insn: Insn) -> None:
        """LR/SC and the AMOs, as `codegen.BlockCodegen.amo` (the interpreter's
        `_amo`): an LR needs the load TLB, an SC or AMO the store TLB; the
        reservation is the physical address in st[RESERVATION]."""
        put = self.put
        word = insn.f3 == 2
        funct5 = insn.bits >> 27
        reservation = f"qword ptr [rdi + {8 * RESERVATION}]"
        load = "movsxd rax, dword ptr [rsi + r11]" if word else "mov rax, qword ptr [rsi + r11]"
        value, width = ("r10d", "dword") if word else ("r10", "qword")
        self.get("rax", insn.rs1)
        if funct5 == 2:  # lr
            self.ram_offset(i, 4 if word else 8, _ACC_LOAD)
            put(load, f"mov r10d, {RAM_BASE}", "add r10, r11", f"mov {reservation}, r10")
            self.set_rax(insn.rd)
            return
        self.ram_offset(i, 4 if word else 8, _ACC_STORE)
        self.get("r10", insn.rs2)
        if funct5 == 3:  # sc: succeeds (rd = 0) only on the reserved address; the reservation goes
            failed, done = self.label("scf"), self.label("scd")
            put(f"mov eax, {RAM_BASE}", "add rax, r11", f"cmp {reservation}, rax", f"jne {failed}")
            put(f"mov {width} ptr [rsi + r11], {value}", "xor eax, eax", f"jmp {done}")
            put(f"{failed}:", "mov eax, 1", f"{done}:", f"mov {reservation}, -1")
            self.set_rax(insn.rd)
            return
        put(load)
        if funct5 in _AMO_ARITH:
            put(f"{_AMO_ARITH[funct5]} r10, rax")
        elif funct5 in _AMO_KEEP_OLD:  # min/max, signed or unsigned, on the access's size
            put(f"cmp {'eax' if word else 'rax'}, {value}", f"{_AMO_KEEP_OLD[funct5]} {value}, {'eax' if word else 'rax'}")
        put(f"mov {width} ptr [rsi + r11], {value}")  # (swap: the value as it is)
        self.set_rax(insn.rd)

    def pc_plus(self, rel: int) -> None:
        if -(1 << 31) <= rel < (1 << 31):
            self.put(f"lea rax, [rcx + {rel}]")
        else:
            self.put(f"movabs rax, {rel}", "add rax, rcx")

    def op(self, insn: Insn) -> None:
        """rax = rax (op) r10, 64-bit."""
        f3, f7 = insn.f3, insn.f7
        put = self.put
        if f7 == 0:
            if f3 in (1, 5):
                put(f"{'shlx' if f3 == 1 else 'shrx'} rax, rax, r10")
            elif f3 in (2, 3):
                put("cmp rax, r10", f"{'setl' if f3 == 2 else 'setb'} al", "movzx eax, al")
            else:
                put(f"{ {0: 'add', 4: 'xor', 6: 'or', 7: 'and'}[f3]} rax, r10")
        elif f7 == 0x20:
            put("sub rax, r10" if f3 == 0 else "sarx rax, rax, r10")
        elif f3 == 0:
            put("imul rax, r10")
        elif f3 in (1, 2, 3):  # the high half: rdx (ram_size) is set aside
            put(f"mov {_SAVE}, rdx", "imul r10" if f3 == 1 else "mul r10")
            if f3 == 2:  # signed x unsigned: the unsigned product's high half, less r10 if rs1 < 0
                self.get("r11", insn.rs1)
                put("sar r11, 63", "and r11, r10", "sub rdx, r11")
            put("mov rax, rdx", f"mov rdx, {_SAVE}")
        else:
            self.divrem(f3, "rax", "r10", "rdx", "cqo")

    def op32(self, insn: Insn) -> None:
        """eax = eax (op) r10d, 32-bit (sign-extended by the caller)."""
        f3, f7 = insn.f3, insn.f7
        if f7 in (0, 0x20) and f3 in (1, 5):
            kind = "shlx" if f3 == 1 else ("shrx" if f7 == 0 else "sarx")
            self.put(f"{kind} eax, eax, r10d")
        elif f7 in (0, 0x20):
            self.put(f"{'add' if f7 == 0 else 'sub'} eax, r10d")
        elif f3 == 0:
            self.put("imul eax, r10d")
        else:
            self.divrem(f3, "eax", "r10d", "edx", "cdq")

    def divrem(self, f3: int, a: str, c: str, high: str, extend: str) -> None:
        """RISC-V division of `a` by `c` into `a`: x/0 = -1, x%0 = x, MIN/-1 = MIN, MIN%-1 = 0.
        (A divisor of -1 is done here, not by idiv, which faults on MIN/-1.)"""
        put = self.put
        signed, rem = f3 in (4, 6), f3 in (6, 7)
        zero, done = self.label("dz"), self.label("dd")
        put(f"test {c}, {c}", f"jz {zero}")
        if signed:
            minus = self.label("dm")
            put(f"cmp {c}, -1", f"je {minus}")
        put(f"mov {_SAVE}, rdx")
        put(extend if signed else "xor edx, edx", f"{'idiv' if signed else 'div'} {c}")
        if rem:
            put(f"mov {a}, {high}")
        put(f"mov rdx, {_SAVE}", f"jmp {done}")
        if signed:
            put(f"{minus}:", f"xor {a}, {a}" if rem else f"neg {a}", f"jmp {done}")
        put(f"{zero}:")
        if not rem:
            put(f"mov {a}, -1")
        put(f"{done}:")


def _low32(reg: str) -> str:
    return {"rax": "eax", "r10": "r10d", "r11": "r11d"}[reg]


def _table_slot(off: str, key: str, found: str, missing: str) -> list[str]:
    """rax: the address of JT_KEY of `key`'s slot in the set of RAM offset
    `off` (`layout.set_of`), its first way if that holds the key, else its
    second, jumping to `found` if that slot holds the key, else to `missing`."""
    return [
        f"mov rax, {off}",
        f"shr rax, {SET_BITS}",
        f"xor rax, {off}",
        "shr rax, 1",  # (off >> 1) ^ (off >> SET_BITS + 1)
        f"and eax, {SETS - 1}",
        "shl rax, 4",  # two ways of 8 bytes
        f"add rax, {_JT}",
        f"add rax, {8 * JT_KEY}",
        f"cmp qword ptr [rax], {key}",
        f"je {found}",
        "add rax, 8",
        f"cmp qword ptr [rax], {key}",
        f"jne {missing}",
        f"jmp {found}",
    ]
