"""The RV64GC interpreter loop, compiled by numba.

`run()` executes one hart until something needs the monitor and returns an
exit reason, like KVM_RUN: an MMIO access (the details are in st[EXIT_*]),
a wfi with nothing pending, or the instruction budget used up. The caller
handles the exit and calls run() again.

Read it top to bottom: fetch (with a one-page fetch cache), expand compressed
instructions, then one branch per major opcode. Traps are taken in place
(pc moves to the handler) and never leave the loop.
"""

from __future__ import annotations

import numpy as np
from pocketvm.cpu.jit import core_jit

from pocketvm.cpu.alu import (
    INT64_MIN,
    MASK32,
    div_signed,
    div_unsigned,
    ltu,
    mulh,
    mulhsu,
    mulhu,
    rem_signed,
    rem_unsigned,
    sext32,
    srl,
)
from pocketvm.cpu.csr import csr_read, csr_write, fs_off, mark_fs_dirty
from pocketvm.cpu.fpu import fp_execute
from pocketvm.cpu.mmu import ACC_FETCH, ACC_LOAD, ACC_STORE, flush_tlb, translate
from pocketvm.cpu.rvc import expand
from pocketvm.cpu.state import (
    CSR,
    CSR_MCYCLE,
    CSR_MIE,
    CSR_MINSTRET,
    CSR_MSTATUS,
    EXIT_ADDR,
    EXIT_MMIO_LOAD,
    EXIT_MMIO_STORE,
    EXIT_PC,
    EXIT_VADDR,
    EXIT_RD,
    EXIT_REASON,
    EXIT_SIZE,
    EXIT_SLICE,
    EXIT_VALUE,
    EXIT_WFI,
    F,
    FETCH_BASE,
    FETCH_PAGE,
    INSN,
    PC,
    PRIV,
    RAM_BASE,
    RESERVATION,
    SH_SLICE_INSNS,
    WFI_FLAG,
)
from pocketvm.cpu.trap import current_mip, mret, pending_interrupt, sret, take_trap, update_mtime

# How many instructions run between two looks at pending interrupts and time.
CHECK_INTERVAL = 128

_CAUSE_ILLEGAL = 2
_CAUSE_BREAKPOINT = 3
_CAUSE_MISALIGNED_LOAD = 4
_CAUSE_LOAD_ACCESS = 5
_CAUSE_MISALIGNED_STORE = 6
_CAUSE_STORE_ACCESS = 7
_CAUSE_FETCH_ACCESS = 1


@core_jit(inline="always")
def _read_ram(ram, ram16, ram32, ram64, off, size):
    """Little-endian unsigned read of `size` bytes at a RAM offset (any alignment)."""
    if size == 8:
        if (off & 7) == 0:
            return ram64[off >> 3]
    elif size == 4:
        if (off & 3) == 0:
            return np.int64(ram32[off >> 2])
    elif size == 2:
        if (off & 1) == 0:
            return np.int64(ram16[off >> 1])
    else:
        return np.int64(ram[off])
    v = 0
    for i in range(size):
        v |= np.int64(ram[off + i]) << (8 * i)
    return v


@core_jit(inline="always")
def _write_ram(ram, ram16, ram32, ram64, off, size, value):
    if size == 8:
        if (off & 7) == 0:
            ram64[off >> 3] = value
            return
    elif size == 4:
        if (off & 3) == 0:
            ram32[off >> 2] = value & MASK32
            return
    elif size == 2:
        if (off & 1) == 0:
            ram16[off >> 1] = value & 0xFFFF
            return
    else:
        ram[off] = value & 0xFF
        return
    for i in range(size):
        ram[off + i] = (value >> (8 * i)) & 0xFF


@core_jit
def _access(st, ram64, ram_size, addr, size, acc):
    """Translate an access of `size` bytes.

    Returns (ram_offset, physical_address, fault_cause): ram_offset is -1 for
    an address outside RAM (an MMIO access); fault_cause is -1 when there is
    no fault. An access that crosses a page boundary must map to contiguous
    RAM; otherwise it faults as an access fault.
    """
    pa = translate(st, ram64, ram_size, addr, acc)
    if pa < 0:
        return -1, 0, -pa - 1
    last = addr + size - 1
    if (last ^ addr) & ~0xFFF:  # crosses a page: both halves must be contiguous RAM
        pa2 = translate(st, ram64, ram_size, last, acc)
        if pa2 < 0:
            return -1, 0, -pa2 - 1
        if pa2 != pa + size - 1:
            return -1, 0, _CAUSE_LOAD_ACCESS if acc == ACC_LOAD else _CAUSE_STORE_ACCESS
    off = pa - RAM_BASE
    if off >= 0 and off + size <= ram_size:
        return off, pa, -1
    return -1, pa, -1


@core_jit
def run(st, stf64, stf32, sh, ram, ram16, ram32, ram64, budget):
    """Run the hart for at most `budget` instructions. Returns an exit reason.

    The budget bounds loop iterations, not only retired instructions: a guest
    whose every instruction traps (a trap vector pointing at unmapped memory)
    must still hand control back to the monitor.
    """
    ram_size = ram.shape[0]
    pc = st[PC]
    n = 0
    steps = 0
    check = 0
    reason = EXIT_SLICE
    while steps < budget:
        steps += 1
        # --- interrupts and time ------------------------------------------
        if check <= 0:
            check = CHECK_INTERVAL
            update_mtime(sh, n)
            cause = pending_interrupt(st, sh)
            if cause >= 0:
                pc = take_trap(st, cause, 0, pc, True)
                st[WFI_FLAG] = 0
        check -= 1

        # --- fetch ----------------------------------------------------------
        vpage = srl(pc, 12)
        if vpage == st[FETCH_PAGE]:
            off = st[FETCH_BASE] + (pc & 0xFFF)
        else:
            pa = translate(st, ram64, ram_size, pc, ACC_FETCH)
            if pa < 0:
                pc = take_trap(st, -pa - 1, pc, pc, False)
                continue
            off = pa - RAM_BASE
            if off < 0 or off >= ram_size:
                pc = take_trap(st, _CAUSE_FETCH_ACCESS, pc, pc, False)
                continue
            st[FETCH_PAGE] = vpage
            st[FETCH_BASE] = off - (pc & 0xFFF)
        insn = np.int64(ram16[off >> 1])
        raw = insn
        if (insn & 3) == 3:
            if (pc & 0xFFF) == 0xFFE:
                pa = translate(st, ram64, ram_size, pc + 2, ACC_FETCH)
                if pa < 0:
                    pc = take_trap(st, -pa - 1, pc + 2, pc, False)
                    continue
                off2 = pa - RAM_BASE
                if off2 < 0 or off2 >= ram_size:
                    pc = take_trap(st, _CAUSE_FETCH_ACCESS, pc + 2, pc, False)
                    continue
                insn |= np.int64(ram16[off2 >> 1]) << 16
            else:
                insn |= np.int64(ram16[(off >> 1) + 1]) << 16
            raw = insn
            npc = pc + 4
        else:
            insn = expand(raw)
            if insn == 0:
                pc = take_trap(st, _CAUSE_ILLEGAL, raw, pc, False)
                continue
            npc = pc + 2

        opcode = insn & 0x7F
        rd = (insn >> 7) & 31
        f3 = (insn >> 12) & 7
        rs1 = (insn >> 15) & 31
        rs2 = (insn >> 20) & 31
        illegal = False

        if opcode == 0x13:  # OP-IMM
            a = st[rs1]
            imm = insn >> 20
            imm = imm - ((imm & 0x800) << 1)
            if f3 == 0:
                st[rd] = a + imm
            elif f3 == 1:
                if (insn >> 26) != 0:
                    illegal = True
                else:
                    st[rd] = a << (imm & 63)
            elif f3 == 2:
                st[rd] = 1 if a < imm else 0
            elif f3 == 3:
                st[rd] = 1 if ltu(a, imm) else 0
            elif f3 == 4:
                st[rd] = a ^ imm
            elif f3 == 5:
                top = (insn >> 26) & 0x3F
                if top == 0:
                    st[rd] = srl(a, imm & 63)
                elif top == 0x10:
                    st[rd] = a >> (imm & 63)
                else:
                    illegal = True
            elif f3 == 6:
                st[rd] = a | imm
            else:
                st[rd] = a & imm
        elif opcode == 0x33:  # OP
            a = st[rs1]
            b = st[rs2]
            f7 = insn >> 25
            if f7 == 0:
                if f3 == 0:
                    st[rd] = a + b
                elif f3 == 1:
                    st[rd] = a << (b & 63)
                elif f3 == 2:
                    st[rd] = 1 if a < b else 0
                elif f3 == 3:
                    st[rd] = 1 if ltu(a, b) else 0
                elif f3 == 4:
                    st[rd] = a ^ b
                elif f3 == 5:
                    st[rd] = srl(a, b & 63)
                elif f3 == 6:
                    st[rd] = a | b
                else:
                    st[rd] = a & b
            elif f7 == 0x20:
                if f3 == 0:
                    st[rd] = a - b
                elif f3 == 5:
                    st[rd] = a >> (b & 63)
                else:
                    illegal = True
            elif f7 == 1:
                if f3 == 0:
                    st[rd] = a * b
                elif f3 == 1:
                    st[rd] = mulh(a, b)
                elif f3 == 2:
                    st[rd] = mulhsu(a, b)
                elif f3 == 3:
                    st[rd] = mulhu(a, b)
                elif f3 == 4:
                    st[rd] = div_signed(a, b)
                elif f3 == 5:
                    st[rd] = div_unsigned(a, b)
                elif f3 == 6:
                    st[rd] = rem_signed(a, b)
                else:
                    st[rd] = rem_unsigned(a, b)
            else:
                illegal = True
        elif opcode == 0x03:  # LOAD
            imm = insn >> 20
            addr = st[rs1] + imm - ((imm & 0x800) << 1)
            if f3 == 7:
                illegal = True
            else:
                size = 1 << (f3 & 3)
                off, pa, fault = _access(st, ram64, ram_size, addr, size, ACC_LOAD)
                if fault >= 0:
                    pc = take_trap(st, fault, addr, pc, False)
                    continue
                if off < 0:
                    st[PC] = npc
                    st[EXIT_PC] = pc
                    st[EXIT_VADDR] = addr
                    st[EXIT_ADDR] = pa
                    st[EXIT_SIZE] = size
                    st[EXIT_RD] = rd | (256 if f3 < 4 else 0)
                    reason = EXIT_MMIO_LOAD
                    n += 1
                    break
                v = _read_ram(ram, ram16, ram32, ram64, off, size)
                if f3 == 0:
                    v = ((v & 0xFF) ^ 0x80) - 0x80
                elif f3 == 1:
                    v = ((v & 0xFFFF) ^ 0x8000) - 0x8000
                elif f3 == 2:
                    v = sext32(v)
                st[rd] = v
        elif opcode == 0x23:  # STORE
            imm = ((insn >> 25) << 5) | ((insn >> 7) & 31)
            addr = st[rs1] + imm - ((imm & 0x800) << 1)
            if f3 > 3:
                illegal = True
            else:
                size = 1 << f3
                off, pa, fault = _access(st, ram64, ram_size, addr, size, ACC_STORE)
                if fault >= 0:
                    pc = take_trap(st, fault, addr, pc, False)
                    continue
                if off < 0:
                    st[PC] = npc
                    st[EXIT_PC] = pc
                    st[EXIT_VADDR] = addr
                    st[EXIT_ADDR] = pa
                    st[EXIT_SIZE] = size
                    st[EXIT_VALUE] = st[rs2]
                    reason = EXIT_MMIO_STORE
                    n += 1
                    break
                _write_ram(ram, ram16, ram32, ram64, off, size, st[rs2])
        elif opcode == 0x63:  # BRANCH
            a = st[rs1]
            b = st[rs2]
            if f3 == 0:
                taken = a == b
            elif f3 == 1:
                taken = a != b
            elif f3 == 4:
                taken = a < b
            elif f3 == 5:
                taken = a >= b
            elif f3 == 6:
                taken = ltu(a, b)
            elif f3 == 7:
                taken = not ltu(a, b)
            else:
                illegal = True
                taken = False
            if taken:
                imm = (
                    (((insn >> 31) & 1) << 12)
                    | (((insn >> 7) & 1) << 11)
                    | (((insn >> 25) & 0x3F) << 5)
                    | (((insn >> 8) & 0xF) << 1)
                )
                npc = pc + imm - ((imm & 0x1000) << 1)
        elif opcode == 0x1B:  # OP-IMM-32
            a = st[rs1]
            imm = insn >> 20
            imm = imm - ((imm & 0x800) << 1)
            if f3 == 0:
                st[rd] = sext32(a + imm)
            elif f3 == 1:
                if (insn >> 25) != 0:
                    illegal = True
                else:
                    st[rd] = sext32(a << (imm & 31))
            elif f3 == 5:
                f7 = insn >> 25
                if f7 == 0:
                    st[rd] = sext32(srl(a & MASK32, imm & 31))
                elif f7 == 0x20:
                    st[rd] = sext32(a) >> (imm & 31)
                else:
                    illegal = True
            else:
                illegal = True
        elif opcode == 0x3B:  # OP-32
            a = st[rs1]
            b = st[rs2]
            f7 = insn >> 25
            if f7 == 0:
                if f3 == 0:
                    st[rd] = sext32(a + b)
                elif f3 == 1:
                    st[rd] = sext32(a << (b & 31))
                elif f3 == 5:
                    st[rd] = sext32(srl(a & MASK32, b & 31))
                else:
                    illegal = True
            elif f7 == 0x20:
                if f3 == 0:
                    st[rd] = sext32(a - b)
                elif f3 == 5:
                    st[rd] = sext32(a) >> (b & 31)
                else:
                    illegal = True
            elif f7 == 1:
                if f3 == 0:
                    st[rd] = sext32(a * b)
                elif f3 == 4:
                    # 64-bit division of the sign-extended halves gives the
                    # 32-bit results, overflow and division by zero included.
                    st[rd] = sext32(div_signed(sext32(a), sext32(b)))
                elif f3 == 5:
                    st[rd] = sext32(div_unsigned(a & MASK32, b & MASK32))
                elif f3 == 6:
                    st[rd] = sext32(rem_signed(sext32(a), sext32(b)))
                elif f3 == 7:
                    st[rd] = sext32(rem_unsigned(a & MASK32, b & MASK32))
                else:
                    illegal = True
            else:
                illegal = True
        elif opcode == 0x37:  # LUI
            st[rd] = sext32(insn & 0xFFFFF000)
        elif opcode == 0x17:  # AUIPC
            st[rd] = pc + sext32(insn & 0xFFFFF000)
        elif opcode == 0x6F:  # JAL
            imm = (
                (((insn >> 31) & 1) << 20)
                | (((insn >> 12) & 0xFF) << 12)
                | (((insn >> 20) & 1) << 11)
                | (((insn >> 21) & 0x3FF) << 1)
            )
            st[rd] = npc
            npc = pc + imm - ((imm & 0x100000) << 1)
        elif opcode == 0x67:  # JALR
            if f3 != 0:
                illegal = True
            else:
                imm = insn >> 20
                target = (st[rs1] + imm - ((imm & 0x800) << 1)) & ~1
                st[rd] = npc
                npc = target
        elif opcode == 0x2F:  # AMO
            if f3 != 2 and f3 != 3:
                illegal = True
            else:
                size = 4 if f3 == 2 else 8
                funct5 = insn >> 27
                addr = st[rs1]
                acc = ACC_LOAD if funct5 == 2 else ACC_STORE
                if funct5 == 2 and rs2 != 0:
                    illegal = True
                elif addr & (size - 1):
                    pc = take_trap(st, _CAUSE_MISALIGNED_LOAD if funct5 == 2 else _CAUSE_MISALIGNED_STORE, addr, pc, False)
                    continue
                else:
                    off, pa, fault = _access(st, ram64, ram_size, addr, size, acc)
                    if fault < 0 and off < 0:
                        fault = _CAUSE_LOAD_ACCESS if funct5 == 2 else _CAUSE_STORE_ACCESS
                    if fault >= 0:
                        pc = take_trap(st, fault, addr, pc, False)
                        continue
                    if size == 4:
                        old = sext32(np.int64(ram32[off >> 2]))
                    else:
                        old = ram64[off >> 3]
                    b = st[rs2]
                    if funct5 == 2:  # lr
                        st[RESERVATION] = pa
                        st[rd] = old
                    elif funct5 == 3:  # sc
                        if st[RESERVATION] == pa:
                            _write_ram(ram, ram16, ram32, ram64, off, size, b)
                            st[rd] = 0
                        else:
                            st[rd] = 1
                        st[RESERVATION] = -1
                    else:
                        if size == 4:
                            b = sext32(b)
                        if funct5 == 0:
                            new = old + b
                        elif funct5 == 1:
                            new = b
                        elif funct5 == 4:
                            new = old ^ b
                        elif funct5 == 0x0C:
                            new = old & b
                        elif funct5 == 0x08:
                            new = old | b
                        elif funct5 == 0x10:
                            new = old if old < b else b
                        elif funct5 == 0x14:
                            new = old if old > b else b
                        elif funct5 == 0x18:
                            if size == 4:
                                new = old if (old & MASK32) < (b & MASK32) else b
                            else:
                                new = old if ltu(old, b) else b
                        elif funct5 == 0x1C:
                            if size == 4:
                                new = old if (old & MASK32) > (b & MASK32) else b
                            else:
                                new = b if ltu(old, b) else old
                        else:
                            illegal = True
                            new = 0
                        if not illegal:
                            _write_ram(ram, ram16, ram32, ram64, off, size, new)
                            st[rd] = old
        elif opcode == 0x0F:  # MISC-MEM: fence / fence.i (no caches to sync)
            if f3 > 1:
                illegal = True
        elif opcode == 0x73:  # SYSTEM
            priv = st[PRIV]
            if f3 == 0:
                if insn == 0x00000073:  # ecall
                    pc = take_trap(st, 8 + priv, 0, pc, False)
                    continue
                elif insn == 0x00100073:  # ebreak
                    pc = take_trap(st, _CAUSE_BREAKPOINT, pc, pc, False)
                    continue
                elif insn == 0x30200073:  # mret
                    if priv < 3:
                        illegal = True
                    else:
                        npc = mret(st)
                        check = 0
                elif insn == 0x10200073:  # sret
                    if priv == 0 or (priv == 1 and (st[CSR + CSR_MSTATUS] & (1 << 22))):
                        illegal = True
                    else:
                        npc = sret(st)
                        check = 0
                elif insn == 0x10500073:  # wfi
                    if priv == 0 or (priv == 1 and (st[CSR + CSR_MSTATUS] & (1 << 21))):
                        illegal = True
                    else:
                        update_mtime(sh, n)
                        if (current_mip(st, sh) & st[CSR + CSR_MIE]) == 0:
                            st[WFI_FLAG] = 1
                            st[PC] = npc
                            reason = EXIT_WFI
                            n += 1
                            break
                        check = 0
                elif (insn >> 25) == 0x09 and rd == 0:  # sfence.vma
                    if priv == 0 or (priv == 1 and (st[CSR + CSR_MSTATUS] & (1 << 20))):
                        illegal = True
                    else:
                        flush_tlb(st)
                else:
                    illegal = True
            elif f3 == 4:
                illegal = True
            else:
                csr = (insn >> 20) & 0xFFF
                if ((csr >> 8) & 3) > priv:
                    illegal = True
                else:
                    src = rs1 if f3 >= 5 else st[rs1]
                    op = f3 & 3
                    writes = op == 1 or rs1 != 0
                    if writes and (csr >> 10) == 3:
                        illegal = True
                    else:
                        ok, old = csr_read(st, sh, csr, n)
                        if not ok:
                            illegal = True
                        else:
                            if writes:
                                # A read-modify-write of mip/sip works on the
                                # software-writable bits, not on the device lines
                                # and timer bits ORed into what a read returns.
                                base = old
                                if csr == 0x344 or csr == 0x144:
                                    base = st[CSR + 0x344]
                                if op == 1:
                                    new = src
                                elif op == 2:
                                    new = base | src
                                else:
                                    new = base & ~src
                                csr_write(st, sh, csr, new, n)
                                check = 0
                            st[rd] = old
        elif opcode == 0x07:  # LOAD-FP
            if (f3 != 2 and f3 != 3) or fs_off(st):
                illegal = True
            else:
                imm = insn >> 20
                addr = st[rs1] + imm - ((imm & 0x800) << 1)
                size = 4 if f3 == 2 else 8
                off, pa, fault = _access(st, ram64, ram_size, addr, size, ACC_LOAD)
                if fault < 0 and off < 0:
                    fault = _CAUSE_LOAD_ACCESS
                if fault >= 0:
                    pc = take_trap(st, fault, addr, pc, False)
                    continue
                v = _read_ram(ram, ram16, ram32, ram64, off, size)
                if size == 4:
                    v = (v & MASK32) | (-1 << 32)
                st[F + rd] = v
                mark_fs_dirty(st)
        elif opcode == 0x27:  # STORE-FP
            if (f3 != 2 and f3 != 3) or fs_off(st):
                illegal = True
            else:
                imm = ((insn >> 25) << 5) | ((insn >> 7) & 31)
                addr = st[rs1] + imm - ((imm & 0x800) << 1)
                size = 4 if f3 == 2 else 8
                off, pa, fault = _access(st, ram64, ram_size, addr, size, ACC_STORE)
                if fault < 0 and off < 0:
                    fault = _CAUSE_STORE_ACCESS
                if fault >= 0:
                    pc = take_trap(st, fault, addr, pc, False)
                    continue
                _write_ram(ram, ram16, ram32, ram64, off, size, st[F + rs2])
        elif opcode == 0x53 or opcode == 0x43 or opcode == 0x47 or opcode == 0x4B or opcode == 0x4F:
            if fs_off(st) or fp_execute(st, stf64, stf32, insn) != 0:
                illegal = True
        else:
            illegal = True

        if illegal:
            st[0] = 0
            pc = take_trap(st, _CAUSE_ILLEGAL, raw, pc, False)
            continue
        st[0] = 0
        pc = npc
        n += 1

    st[0] = 0
    if reason == EXIT_SLICE:
        st[PC] = pc
    st[EXIT_REASON] = reason
    st[CSR + CSR_MINSTRET] += n
    st[CSR + CSR_MCYCLE] = st[CSR + CSR_MINSTRET]
    sh[SH_SLICE_INSNS] += n
    return reason
