"""LLVM IR for one block (see `native_call` for the function's signature).

Guest registers live in allocas for the whole block, which LLVM promotes
to host registers; they are written back to `st` at every exit. Loads and
stores do the TLB lookup inline, exactly as the interpreter's fast path
does, and anything else (TLB miss, device, misaligned, a store into the
block's own code page) exits *before* the instruction with st[PC] = its pc
and the count of instructions retired so far, for the interpreter to run
it. A block that ends with a branch or jump back to its own start loops in
native code for as long as `max_insns` allows; one that goes on at a known
place in the same physical page jumps straight to the block there when the
translation table has one (a guaranteed tail call, so chains of any length
use no stack).
"""

from __future__ import annotations

from llvmlite import ir

from pocketvm.cpu.state import PC, RAM_BASE, TLB, TLB_ENTRIES
from pocketvm.cpu.tier1.decode import Insn, Region
from pocketvm.cpu.tier1.layout import JT_FN, JT_KEY, block_key, slot_index

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
I128 = ir.IntType(128)
FN_TYPE = ir.FunctionType(I64, [I64.as_pointer(), I8.as_pointer(), I64, I64, I64, I64, I64, I64])

_ACC_LOAD = 1
_ACC_STORE = 2
_WRITES_RD = (0x13, 0x1B, 0x33, 0x3B, 0x37, 0x17, 0x6F, 0x67, 0x03)


def c64(v: int) -> ir.Constant:
    v &= (1 << 64) - 1
    return ir.Constant(I64, v - (1 << 64) if v >> 63 else v)


def c32(v: int) -> ir.Constant:
    v &= (1 << 32) - 1
    return ir.Constant(I32, v - (1 << 32) if v >> 31 else v)


class BlockCodegen:
    """Emits one function into `module` for the block at RAM offset `off`."""

    def __init__(
        self, module: ir.Module, name: str, off: int, paged: bool, region: Region, table_addr: int | None
    ):
        """`paged`: loads and stores are translated (the table keys the block by it too);
        `table_addr`: address of the translation table's data, for chaining (None: no chaining)."""
        self.off = off
        self.paged = paged
        self.region = region
        self.insns = region.insns
        self.table_addr = table_addr
        self.fn = ir.Function(module, FN_TYPE, name=name)
        self.st, self.ram, self.ram_size, self.pc, self.dx, self.dtag, self.max_insns, self.done_in = self.fn.args
        for a in (self.st, self.ram):
            a.add_attribute("noalias")
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        written = {i.rd for i in self.insns if i.opcode in _WRITES_RD}
        read = {i.rs1 for i in self.insns if i.opcode not in (0x37, 0x17, 0x6F)}
        read |= {i.rs2 for i in self.insns if i.opcode in (0x33, 0x3B, 0x23, 0x63)}
        self.written = written - {0}
        self.used = sorted((read | written) - {0})
        self.regs: dict[int, ir.AllocaInstr] = {}
        self.done = None  # alloca: instructions retired before the current sub-block

    # --- helpers ----------------------------------------------------------------
    def st_ptr(self, index) -> ir.Value:
        idx = index if isinstance(index, ir.Value) else c64(index)
        return self.b.gep(self.st, [idx])

    def get(self, r: int) -> ir.Value:
        if r == 0:
            return c64(0)
        return self.b.load(self.regs[r])

    def set(self, r: int, v: ir.Value) -> None:
        if r != 0:
            self.b.store(v, self.regs[r])

    def pc_plus(self, rel: int) -> ir.Value:
        return self.b.add(self.pc, c64(rel)) if rel else self.pc

    def exit_block(self, next_pc: ir.Value | int, retired_in_pass: int, done: ir.Value | None = None) -> None:
        """Leave for the interpreter at `next_pc` (block-relative when an int)."""
        npc = self.pc_plus(next_pc) if isinstance(next_pc, int) else next_pc
        self._to_epilogue(npc, retired_in_pass, done, None)

    def exit_to(self, target_rel: int, retired_in_pass: int, done: ir.Value | None = None) -> None:
        """Like exit_block to block-relative `target_rel`, chaining to the block there if there is one."""
        in_page = 0 <= (self.off & 0xFFF) + target_rel < 0x1000
        target_off = self.off + target_rel if in_page and self.table_addr is not None else None
        self._to_epilogue(self.pc_plus(target_rel), retired_in_pass, done, target_off)

    def _to_epilogue(self, npc: ir.Value, retired_in_pass: int, done: ir.Value | None, target_off: int | None) -> None:
        b = self.b
        base = done if done is not None else b.load(self.done)
        total = b.add(base, c64(retired_in_pass))
        if target_off is None:
            slot_addr, want = 0, -2  # a key that never matches
        else:
            slot_addr, want = 8 * (JT_KEY + slot_index(target_off)), block_key(target_off, self.paged)
        self.exits.append((b.block, npc, total, c64(slot_addr), c64(want)))
        b.branch(self.epilogue)

    def emit_epilogue(self) -> None:
        """All exits meet here: write the registers back, then chain or return."""
        b = self.b
        b.position_at_end(self.epilogue)
        phis = [b.phi(I64) for _ in range(4)]
        for block, *values in self.exits:
            for phi, v in zip(phis, values):
                phi.add_incoming(v, block)
        npc, total, slot_addr, want = phis
        for r in sorted(self.written):
            b.store(b.load(self.regs[r]), self.st_ptr(r))
        if self.table_addr is not None and any(e[4].constant != -2 for e in self.exits):
            table = c64(self.table_addr)
            key = b.load(b.inttoptr(b.add(table, slot_addr), I64.as_pointer()))
            target = b.load(b.inttoptr(b.add(table, b.add(slot_addr, c64(8 * (JT_FN - JT_KEY)))), I64.as_pointer()))
            ok = b.and_(b.icmp_signed("==", key, want), b.icmp_signed("!=", target, c64(0)))
            chain_bb = self.fn.append_basic_block("chain")
            plain_bb = self.fn.append_basic_block("plain")
            b.cbranch(ok, chain_bb, plain_bb)
            b.position_at_end(chain_bb)
            callee = b.inttoptr(target, FN_TYPE.as_pointer())
            args = [self.st, self.ram, self.ram_size, npc, self.dx, self.dtag, self.max_insns, total]
            b.ret(b.call(callee, args, tail="musttail"))
            b.position_at_end(plain_bb)
        b.store(npc, self.st_ptr(PC))
        b.ret(total)

    def side_exit_if(self, cond: ir.Value, index: int) -> None:
        """Leave before instruction `index` of the current sub-block when `cond` holds."""
        insn = self.cur[index]
        exit_bb = self.fn.append_basic_block(f"exit{index}")
        cont = self.fn.append_basic_block(f"i{index}c")
        self.b.cbranch(cond, exit_bb, cont)
        self.b.position_at_end(exit_bb)
        self.exit_block(insn.rel, index)
        self.b.position_at_end(cont)

    # --- the function ------------------------------------------------------------
    def emit(self) -> None:
        b = self.b
        # The code must still be what it was translated from.
        diff = None
        for insn in self.insns:
            ty = I16 if insn.length == 2 else I32
            p = b.bitcast(b.gep(self.ram, [c64(self.off + insn.rel)]), ty.as_pointer())
            word = b.load(p, align=2)
            x = b.xor(word, ir.Constant(ty, insn.raw))
            if ty is I16:
                x = b.zext(x, I32)
            diff = x if diff is None else b.or_(diff, x)
        with b.if_then(b.icmp_unsigned("!=", diff, c32(0)), likely=False):
            # Stale: -1 tells the interpreter to drop it; a chaining block gets its own count back.
            b.store(self.pc, self.st_ptr(PC))
            first = b.icmp_signed("==", self.done_in, c64(0))
            b.ret(b.select(first, c64(-1), self.done_in))
        for r in self.used:
            a = b.alloca(I64, name=f"x{r}")
            b.store(b.load(self.st_ptr(r)), a)
            self.regs[r] = a
        self.done = b.alloca(I64, name="done")
        b.store(self.done_in, self.done)
        self.epilogue = self.fn.append_basic_block("epilogue")
        self.exits = []
        self.labels = {start: self.fn.append_basic_block(f"L{start}") for start in self.region.blocks}
        b.branch(self.labels[0])
        for start, sub in self.region.blocks.items():
            b.position_at_end(self.labels[start])
            self.cur = sub.insns
            n = len(sub.insns)
            # Not enough budget left for this sub-block: the interpreter goes on from here.
            short = b.icmp_signed(">", b.add(b.load(self.done), c64(n)), self.max_insns)
            go = self.fn.append_basic_block(f"L{start}go")
            stop = self.fn.append_basic_block(f"L{start}stop")
            b.cbranch(short, stop, go)
            b.position_at_end(stop)
            self.exit_block(start, 0)
            b.position_at_end(go)
            for i, insn in enumerate(sub.insns):
                if not self.emit_insn(i, insn):
                    break  # a jump or branch ended the sub-block
            else:
                self.goto(sub.next_rel, n)
        self.emit_epilogue()

    def goto(self, target_rel: int, retired_in_pass: int) -> None:
        """End of a sub-block that goes on at block-relative `target_rel`."""
        label = self.labels.get(target_rel)
        if label is None:
            self.exit_to(target_rel, retired_in_pass)
            return
        b = self.b
        b.store(b.add(b.load(self.done), c64(retired_in_pass)), self.done)
        b.branch(label)

    # --- memory -------------------------------------------------------------------
    def ram_pointer(self, i: int, addr: ir.Value, size: int, acc: int) -> ir.Value:
        """Host pointer for an aligned RAM access at guest `addr`, or a side exit.

        All the reasons to leave (misaligned, TLB miss or no RAM, a store
        into this code's own page) are folded into one test."""
        b = self.b
        bad = b.and_(addr, c64(size - 1)) if size > 1 else None
        if self.paged:
            table = TLB + acc * 2 * TLB_ENTRIES
            slot = b.add(b.and_(b.lshr(addr, c64(11)), c64(2 * TLB_ENTRIES - 2)), c64(table))
            tag = b.load(self.st_ptr(slot))
            want = b.or_(b.and_(addr, c64(-4096)), self.dtag)
            miss = b.xor(tag, want)
            page = b.load(self.st_ptr(b.add(slot, c64(1))))
            off = b.add(page, b.and_(addr, c64(0xFFF)))
        else:
            off = b.sub(addr, c64(RAM_BASE))
            miss = b.zext(b.icmp_unsigned(">=", off, self.ram_size), I64)
        bad = miss if bad is None else b.or_(bad, miss)
        if acc == _ACC_STORE:
            same_page = b.icmp_signed("==", b.lshr(off, c64(12)), c64(self.off >> 12))
            bad = b.or_(bad, b.zext(same_page, I64))
        self.side_exit_if(b.icmp_unsigned("!=", bad, c64(0)), i)
        ty = {1: I8, 2: I16, 4: I32, 8: I64}[size]
        return b.bitcast(b.gep(self.ram, [off]), ty.as_pointer())

    # --- instructions ---------------------------------------------------------------
    def emit_insn(self, i: int, insn: Insn) -> bool:
        """Emit one instruction; False when it ended the function (block-ending jump)."""
        b = self.b
        op, f3, rd = insn.opcode, insn.f3, insn.rd
        if op == 0x13:
            a = self.get(insn.rs1)
            imm = insn.imm_i
            if f3 == 0:
                v = b.add(a, c64(imm))
            elif f3 == 1:
                v = b.shl(a, c64(imm & 63))
            elif f3 == 2:
                v = b.zext(b.icmp_signed("<", a, c64(imm)), I64)
            elif f3 == 3:
                v = b.zext(b.icmp_unsigned("<", a, c64(imm)), I64)
            elif f3 == 4:
                v = b.xor(a, c64(imm))
            elif f3 == 5:
                v = b.ashr(a, c64(imm & 63)) if (insn.bits >> 30) & 1 else b.lshr(a, c64(imm & 63))
            elif f3 == 6:
                v = b.or_(a, c64(imm))
            else:
                v = b.and_(a, c64(imm))
            self.set(rd, v)
        elif op == 0x1B:
            a32 = b.trunc(self.get(insn.rs1), I32)
            sh = insn.rs2  # shamt[4:0]
            if f3 == 0:
                v = b.add(a32, c32(insn.imm_i))
            elif f3 == 1:
                v = b.shl(a32, c32(sh))
            elif insn.f7 == 0:
                v = b.lshr(a32, c32(sh))
            else:
                v = b.ashr(a32, c32(sh))
            self.set(rd, b.sext(v, I64))
        elif op == 0x33:
            self.set(rd, self.op(insn, self.get(insn.rs1), self.get(insn.rs2)))
        elif op == 0x3B:
            self.set(rd, self.op32(insn, self.get(insn.rs1), self.get(insn.rs2)))
        elif op == 0x37:
            self.set(rd, c64(insn.imm_u))
        elif op == 0x17:
            self.set(rd, b.add(self.pc, c64(insn.rel + insn.imm_u)))
        elif op == 0x03:
            addr = b.add(self.get(insn.rs1), c64(insn.imm_i))
            size = 1 << (f3 & 3)
            p = self.ram_pointer(i, addr, size, _ACC_LOAD)
            v = b.load(p, align=size)
            if size < 8:
                v = b.zext(v, I64) if f3 >= 4 else b.sext(v, I64)
            self.set(rd, v)
        elif op == 0x23:
            addr = b.add(self.get(insn.rs1), c64(insn.imm_s))
            size = 1 << f3
            v = self.get(insn.rs2)  # read before the exits: no register changes in between
            p = self.ram_pointer(i, addr, size, _ACC_STORE)
            if size < 8:
                v = b.trunc(v, {1: I8, 2: I16, 4: I32}[size])
            b.store(v, p, align=size)
        elif op == 0x0F:
            pass  # fence: nothing to order in a single-threaded emulator
        elif op == 0x6F:
            self.set(rd, self.pc_plus(insn.rel + insn.length))
            self.goto(insn.rel + insn.imm_j, i + 1)
            return False
        elif op == 0x67:
            target = b.and_(b.add(self.get(insn.rs1), c64(insn.imm_i)), c64(-2))
            self.set(rd, self.pc_plus(insn.rel + insn.length))
            self.exit_block(target, i + 1)
            return False
        elif op == 0x63:
            a, c = self.get(insn.rs1), self.get(insn.rs2)
            pred = {0: ("==", True), 1: ("!=", True), 4: ("<", True), 5: (">=", True), 6: ("<", False), 7: (">=", False)}
            cmp, signed = pred[f3]
            taken = b.icmp_signed(cmp, a, c) if signed else b.icmp_unsigned(cmp, a, c)
            t_bb = self.fn.append_basic_block(f"i{i}taken")
            f_bb = self.fn.append_basic_block(f"i{i}fall")
            b.cbranch(taken, t_bb, f_bb)
            b.position_at_end(t_bb)
            self.goto(insn.rel + insn.imm_b, i + 1)
            b.position_at_end(f_bb)
            self.goto(insn.rel + insn.length, i + 1)
            return False
        else:  # decode_block only lets through what is handled above
            raise AssertionError(f"untranslatable instruction {insn.bits:#010x}")
        return True

    def op(self, insn: Insn, a: ir.Value, c: ir.Value) -> ir.Value:
        b = self.b
        f3, f7 = insn.f3, insn.f7
        if f7 == 0:
            return [
                lambda: b.add(a, c),
                lambda: b.shl(a, b.and_(c, c64(63))),
                lambda: b.zext(b.icmp_signed("<", a, c), I64),
                lambda: b.zext(b.icmp_unsigned("<", a, c), I64),
                lambda: b.xor(a, c),
                lambda: b.lshr(a, b.and_(c, c64(63))),
                lambda: b.or_(a, c),
                lambda: b.and_(a, c),
            ][f3]()
        if f7 == 0x20:
            return b.sub(a, c) if f3 == 0 else b.ashr(a, b.and_(c, c64(63)))
        # M extension
        if f3 == 0:
            return b.mul(a, c)
        if f3 in (1, 2, 3):
            wa = b.sext(a, I128) if f3 in (1, 2) else b.zext(a, I128)
            wc = b.sext(c, I128) if f3 == 1 else b.zext(c, I128)
            return b.trunc(b.lshr(b.mul(wa, wc), ir.Constant(I128, 64)), I64)
        return self.divrem(f3, a, c, I64)

    def op32(self, insn: Insn, a: ir.Value, c: ir.Value) -> ir.Value:
        b = self.b
        f3, f7 = insn.f3, insn.f7
        a32, c32_ = b.trunc(a, I32), b.trunc(c, I32)
        sh = b.and_(c32_, c32(31))
        if f7 == 0:
            v = {0: lambda: b.add(a32, c32_), 1: lambda: b.shl(a32, sh), 5: lambda: b.lshr(a32, sh)}[f3]()
        elif f7 == 0x20:
            v = b.sub(a32, c32_) if f3 == 0 else b.ashr(a32, sh)
        elif f3 == 0:
            v = b.mul(a32, c32_)
        else:
            v = self.divrem(f3, a32, c32_, I32)
        return b.sext(v, I64)

    def divrem(self, f3: int, a: ir.Value, c: ir.Value, ty: ir.IntType) -> ir.Value:
        """RISC-V division: x/0 = -1 (all ones), x%0 = x, MIN/-1 = MIN, MIN%-1 = 0."""
        b = self.b
        zero = ir.Constant(ty, 0)
        one = ir.Constant(ty, 1)
        ones = ir.Constant(ty, -1)
        by_zero = b.icmp_signed("==", c, zero)
        if f3 in (4, 6):  # signed
            minv = ir.Constant(ty, -(1 << (ty.width - 1)))
            overflow = b.and_(b.icmp_signed("==", a, minv), b.icmp_signed("==", c, ones))
            safe = b.select(b.or_(by_zero, overflow), one, c)
            if f3 == 4:
                q = b.sdiv(a, safe)
                return b.select(by_zero, ones, b.select(overflow, a, q))
            r = b.srem(a, safe)
            return b.select(by_zero, a, b.select(overflow, zero, r))
        safe = b.select(by_zero, one, c)
        if f3 == 5:
            return b.select(by_zero, ones, b.udiv(a, safe))
        return b.select(by_zero, a, b.urem(a, safe))
