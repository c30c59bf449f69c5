"""LLVM IR for one region (see `native_call` for the function's signature).

The IR is written as text: building it with llvmlite's IR objects took
most of the translation time (about 0.3 ms per guest instruction).

Guest registers live in allocas for the whole region, which LLVM promotes
to host registers; they are written back to `st` at every exit. Loads and
stores do the TLB lookup inline, exactly as the interpreter's fast path
does, and anything else (TLB miss, device, misaligned, a store into the
region's own code page) exits *before* the instruction with st[PC] = its
pc and the count of instructions retired so far, for the interpreter to run
it. Branches between the region's sub-blocks are plain jumps, so loops stay
in native code for as long as `max_insns` allows; an exit to a known place
in the same physical page jumps straight to the block there when the
translation table has one (a guaranteed tail call, so chains of any length
use no stack).

The code holds no host address and does not depend on where in guest RAM
its page is (the RAM offset of the entry is an argument, %off): the same
object serves the same code wherever it is loaded, in this process or,
from the persistent cache, in the next.
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
from pocketvm.cpu.tier1.decode import Insn, Region, ends_block, successors
from pocketvm.cpu.tier1.fpgen import FpGen
from pocketvm.cpu.tier1.layout import JT_FN, JT_HOT, JT_KEY, SET_BITS, SETS, WAYS

_ACC_LOAD = 1
_ACC_STORE = 2
_WRITES_RD = (0x13, 0x1B, 0x33, 0x3B, 0x37, 0x17, 0x6F, 0x67, 0x03, 0x2F)
_INT_TYPE = {1: "i8", 2: "i16", 4: "i32", 8: "i64"}
FP_OPS = (0x53, 0x43, 0x47, 0x4B, 0x4F)  # FP arithmetic: calls the FPU
_FP_OPS = FP_OPS
_FS = 3 << 13
_FS_DIRTY = (3 << 13) | (-(1 << 63))
_NAN_BOX = -(1 << 32)
_BRANCH = {0: "eq", 1: "ne", 4: "slt", 5: "sge", 6: "ult", 7: "uge"}
_AMO_ARITH = {0x00: "add", 0x04: "xor", 0x0C: "and", 0x08: "or"}  # by funct5
_AMO_KEEP_OLD = {0x10: "slt", 0x14: "sgt", 0x18: "ult", 0x1C: "ugt"}  # min, max, minu, maxu: old wins when
# An exit's code (see `BlockCodegen._to_epilogue`): instructions retired in
# the bits below _IN_PAGE, then its way to chain on.
_IN_PAGE = 1 << 16
_LOOKUP = 1 << 17
_ARGS = (
    "ptr noalias %st, ptr noalias %ram, i64 %ram_size, i64 %pc, i64 %dx, i64 %dtag, i64 %maxn, i64 %done_in, "
    "ptr noalias %jt, i64 %off"
)


def s64(v: int) -> str:
    """A 64-bit constant, as LLVM wants it (signed decimal)."""
    v &= (1 << 64) - 1
    return str(v - (1 << 64) if v >> 63 else v)


def s32(v: int) -> str:
    v &= (1 << 32) - 1
    return str(v - (1 << 32) if v >> 31 else v)


def module_text(triple: str, functions: list[str]) -> str:
    # !0: the branch weights that mark exits as unlikely.
    return f'target triple = "{triple}"\n\n' + "\n".join(functions) + '\n!0 = !{!"branch_weights", i32 1, i32 2000}\n'


class BlockCodegen:
    """The text of one function for the region at RAM offset `off`."""

    def __init__(
        self, name: str, off: int, paged: bool, region: Region, chain: bool = True, in_state: bool = False,
        count: bool = False,
    ):
        """`paged`: loads and stores are translated (the table keys the block by it too);
        `chain`: exits jump to the translated block at their target when the table has one;
        `in_state`: guest registers are read from and written to `st` where
        they are used (for code compiled quickly, see `translator`) instead
        of living in allocas; `count`: each budget check (at entry and where
        a loop comes back) adds what it checked to the slot's JT_HOT, chained
        entries too (code compiled quickly: the VM has it compiled well once
        that is high, see `engine.UPGRADE_INSTRUCTIONS`). The code
        holds no host address: the table (%jt) has them."""
        self.name = name
        self.off = off & 0xFFF  # the code depends on its place in the page only: %off is an argument
        self.paged = paged
        self.region = region
        self.insns = region.insns
        self.chain = chain
        written = {i.rd for i in self.insns if i.opcode in _WRITES_RD or i.opcode in _FP_OPS}
        read = {i.rs1 for i in self.insns if i.opcode not in (0x37, 0x17, 0x6F)}
        read |= {i.rs2 for i in self.insns if i.opcode in (0x33, 0x3B, 0x23, 0x63, 0x2F)}
        self.in_state = in_state
        self.count = count
        # In allocas: every register the region uses, copied in at entry and
        # the written ones back at every exit. In `st`: none, and what an LLVM
        # block already loaded or stored is reused within it (`known`).
        self.written = [] if in_state else sorted(written - {0})
        self.used = [] if in_state else sorted((read | written) - {0})
        self.known: dict[int, str] = {}
        self.known_ptr: dict[int, str] = {}
        self.lines: list[str] = []
        self.n = 0  # for labels
        self.values = 0
        self.block = "entry"
        # (from label, next pc - %pc, `_exit_code`)
        self.exits: list[tuple[str, str, int]] = []
        self.cur: list[Insn] = []
        self.fp = FpGen(self)  # F/D instructions and the F registers

    # --- text helpers ---------------------------------------------------------------
    def v(self, text: str) -> str:
        """Emit `%N = text` and return %N.

        Unnamed (numbered) values: LLVM's parser keeps no name for them,
        which took a third of its time (their numbers must be in order of
        definition, as the lines are emitted)."""
        name = f"%{self.values}"
        self.values += 1
        self.lines.append(f"  {name} = {text}")
        return name

    def put(self, text: str) -> None:
        self.lines.append(f"  {text}")

    def new_label(self, hint: str) -> str:
        self.n += 1
        return f"{hint}{self.n}"

    def start(self, label: str) -> None:
        self.lines.append(f"{label}:")
        self.block = label
        self.known.clear()  # values of other blocks would live across blocks: spilled at -O0
        self.known_ptr.clear()

    def st_ptr(self, index: str | int) -> str:
        return self.v(f"getelementptr i64, ptr %st, i64 {index}")

    def get(self, r: int) -> str:
        if r == 0:
            return "0"
        if not self.in_state:
            return self.v(f"load i64, ptr %x{r}")
        value = self.known.get(r)
        if value is None:
            value = self.known[r] = self.v(f"load i64, ptr {self.reg_ptr(r)}")
        return value

    def reg_ptr(self, r: int) -> str:
        """Pointer to x`r` in st, made once per LLVM block."""
        ptr = self.known_ptr.get(r)
        if ptr is None:
            ptr = self.known_ptr[r] = self.st_ptr(r)
        return ptr

    def set(self, r: int, value: str) -> None:
        if r == 0:
            return
        if not self.in_state:
            self.put(f"store i64 {value}, ptr %x{r}")
            return
        # Stored at once: an instruction writes its rd after its last reason
        # to leave, so st holds at every exit what the allocas would.
        self.put(f"store i64 {value}, ptr {self.reg_ptr(r)}")
        self.known[r] = value

    def pc_plus(self, rel: int) -> str:
        return self.v(f"add i64 %pc, {rel}") if rel else "%pc"

    # --- exits ------------------------------------------------------------------------
    # Every exit is a branch to the epilogue with two values in its phis:
    # where to go on (as a distance from %pc: a constant, but for a computed
    # target), and a constant (`_exit_code`) that holds the instructions
    # retired since %done was last stored, whether to chain to the block at
    # that distance in this page (%off + the distance) and whether to look
    # for a block at the next pc through the fetch TLB (a jalr, a jump out
    # of the page). The epilogue does the rest once per function: an exit
    # costs its branch, not 15-40 lines of arithmetic, and the IR is what
    # LLVM's time goes by. (Each phi costs every exit a copy, spilled at
    # -O0: with five phis, as there were, the quick tier's code generation
    # took ~10% longer.)
    def exit_block(self, next_pc: str | int, retired: int) -> None:
        """Leave for the interpreter at `next_pc` (block-relative when an int)."""
        self._to_epilogue(self._delta(next_pc), retired, None)

    def exit_to(self, target_rel: int, retired: int) -> None:
        """Like exit_block to block-relative `target_rel`, chaining to the block there if there is one."""
        in_page = 0 <= (self.off & 0xFFF) + target_rel < 0x1000
        if not self.chain:
            self._to_epilogue(str(target_rel), retired, None)
        elif in_page:  # same physical page: the target's key follows from this block's
            self._to_epilogue(str(target_rel), retired, "page")
        else:
            self._to_epilogue(str(target_rel), retired, "lookup")

    def exit_indirect(self, target: str, retired: int) -> None:
        """Leave for a computed pc (jalr), chaining to the block there if there is one."""
        self._to_epilogue(self._delta(target), retired, "lookup" if self.chain else None)

    def _delta(self, next_pc: str | int) -> str:
        return str(next_pc) if isinstance(next_pc, int) else self.v(f"sub i64 {next_pc}, %pc")

    def lookup(self, pc: str) -> tuple[str, str]:
        """(RAM offset, found) of the block at virtual `pc`, found as the
        interpreter's fetch does: untranslated in M-mode or without paging,
        else through the fetch TLB (a miss: not found)."""
        v = self.v
        priv = v(f"load i64, ptr {self.st_ptr(PRIV)}")
        satp = v(f"load i64, ptr {self.st_ptr(CSR + CSR_SATP)}")
        mstatus = v(f"load i64, ptr {self.st_ptr(CSR + CSR_MSTATUS)}")
        not_m = v(f"icmp ne i64 {priv}, 3")
        satp_mode = v(f"lshr i64 {satp}, 60")
        paging = v(f"and i1 {not_m}, {v(f'icmp ne i64 {satp_mode}, 0')}")
        bare_off = v(f"sub i64 {pc}, {RAM_BASE}")
        bare_ok = v(f"icmp ult i64 {bare_off}, %ram_size")
        index = v(f"and i64 {v(f'lshr i64 {pc}, 11')}, {2 * TLB_ENTRIES - 2}")
        entry = v(f"getelementptr i64, ptr %st, i64 {index}")  # the fetch table comes first
        tag = v(f"load i64, ptr {v(f'getelementptr i64, ptr {entry}, i64 {TLB}')}")
        sum_bit = v(f"and i64 {v(f'lshr i64 {mstatus}, 17')}, 2")  # SUM (bit 18) -> bit 1
        mxr_bit = v(f"and i64 {v(f'lshr i64 {mstatus}, 19')}, 1")  # MXR (bit 19) -> bit 0
        sum_mxr = v(f"or i64 {sum_bit}, {mxr_bit}")
        mode = v(f"or i64 {v(f'shl i64 {priv}, 2')}, {sum_mxr}")
        want_tag = v(f"or i64 {v(f'and i64 {pc}, -4096')}, {mode}")
        tlb_ok = v(f"icmp eq i64 {tag}, {want_tag}")
        page = v(f"load i64, ptr {v(f'getelementptr i64, ptr {entry}, i64 {TLB + 1}')}")
        tlb_off = v(f"add i64 {page}, {v(f'and i64 {pc}, 4095')}")
        off = v(f"select i1 {paging}, i64 {tlb_off}, i64 {bare_off}")
        # (paging and tlb_ok) or (not paging and bare_ok): FastISel cannot select an i1.
        not_paging = v(f"xor i1 {paging}, true")
        ok = v(f"or i1 {v(f'and i1 {paging}, {tlb_ok}')}, {v(f'and i1 {not_paging}, {bare_ok}')}")
        return off, ok

    def _to_epilogue(self, delta: str, retired: int, chain: str | None) -> None:
        """`chain`: "page" (the block at %off + `delta`, in this page), or
        "lookup" (the block at the next pc, through the fetch TLB), or None."""
        assert 0 <= retired < _IN_PAGE
        code = retired | (_IN_PAGE if chain == "page" else 0) | (_LOOKUP if chain == "lookup" else 0)
        self.exits.append((self.block, delta, code))
        self.put("br label %epilogue")

    def side_exit_if(self, cond: str, index: int) -> None:
        """Leave before instruction `index` of the current sub-block when `cond` (i1) holds."""
        out, go = self.new_label("out"), self.new_label("go")
        self.put(f"br i1 {cond}, label %{out}, label %{go}, !prof !0")
        self.start(out)
        self.exit_block(self.cur[index].rel, index)
        self.start(go)

    def emit_epilogue(self) -> None:
        """All exits meet here: write the registers back, then chain or return."""
        self.start("epilogue")
        v = self.v
        delta = v("phi i64 " + ", ".join(f"[ {e[1]}, %{e[0]} ]" for e in self.exits))
        code = v("phi i64 " + ", ".join(f"[ {e[2]}, %{e[0]} ]" for e in self.exits))
        retired = v(f"and i64 {code}, {_IN_PAGE - 1}")
        npc = v(f"add i64 %pc, {delta}")
        # %done is stored only where a sub-block goes on to another: at every exit it is the sub-block's start.
        total = v(f"add i64 {v('load i64, ptr %done')}, {retired}")
        for r in self.written:
            self.put(f"store i64 {v(f'load i64, ptr %x{r}')}, ptr {self.st_ptr(r)}")
        self.fp.store_registers()
        in_page = any(e[2] & _IN_PAGE for e in self.exits)
        lookup = any(e[2] & _LOOKUP for e in self.exits)
        if in_page or lookup:
            target_off = v(f"add i64 %off, {delta}")
            look = v(f"icmp ne i64 {v(f'and i64 {code}, {_IN_PAGE}')}, 0")
        if lookup:
            indirect = v(f"icmp ne i64 {v(f'and i64 {code}, {_LOOKUP}')}, 0")
            came = self.block
            self.put(f"br i1 {indirect}, label %lookup, label %table")
            self.start("lookup")
            found_off, found = self.lookup(npc)
            self.put("br label %table")
            self.start("table")
            target_off = v(f"phi i64 [ {target_off}, %{came} ], [ {found_off}, %lookup ]")
            look = v(f"phi i1 [ {look}, %{came} ], [ {found}, %lookup ]")
        if in_page or lookup:
            key = v(f"add i64 {v(f'shl i64 {target_off}, 1')}, {1 if self.paged else 0}")
            want = v(f"select i1 {look}, i64 {key}, i64 -2")  # -2: a key that never matches
            key_ptr = self.table_slot(target_off, want)
            found = v(f"load i64, ptr {key_ptr}")
            fn_ptr = v(f"getelementptr i8, ptr {key_ptr}, i64 {8 * (JT_FN - JT_KEY)}")
            target = v(f"load i64, ptr {fn_ptr}")
            ok = v(f"and i1 {v(f'icmp eq i64 {found}, {want}')}, {v(f'icmp ne i64 {target}, 0')}")
            self.put(f"br i1 {ok}, label %chain, label %plain")
            self.start("chain")
            callee = v(f"inttoptr i64 {target} to ptr")
            r = v(
                f"musttail call i64 {callee}(ptr %st, ptr %ram, i64 %ram_size, i64 {npc}, i64 %dx, i64 %dtag, "
                f"i64 %maxn, i64 {total}, ptr %jt, i64 {target_off})"
            )
            self.put(f"ret i64 {r}")
            self.start("plain")
        self.put(f"store i64 {npc}, ptr {self.st_ptr(PC)}")
        self.put(f"ret i64 {total}")

    def table_slot(self, off: str, key: str) -> str:
        """A pointer to JT_KEY of `key`'s slot if its set (`layout.set_of` of RAM
        offset `off`) has it in its first way, else of the second way (2 ways)."""
        v = self.v
        hashed = v(f"xor i64 {v(f'lshr i64 {off}, 1')}, {v(f'lshr i64 {off}, {SET_BITS + 1}')}")
        first = v(f"mul i64 {v(f'and i64 {hashed}, {SETS - 1}')}, {WAYS}")
        slot = v(f"shl i64 {v(f'add i64 {first}, {JT_KEY}')}, 3")
        first_ptr = v(f"getelementptr i8, ptr %jt, i64 {slot}")
        in_first = v(f"icmp eq i64 {v(f'load i64, ptr {first_ptr}')}, {key}")
        return v(f"getelementptr i8, ptr {first_ptr}, i64 {v(f'select i1 {in_first}, i64 0, i64 8')}")

    def hot_counter(self) -> None:
        """%hot: JT_HOT of this block's slot (its key is there: it was called
        or chained to through it), where each budget check adds what it checked."""
        v = self.v
        key_ptr = self.table_slot("%off", v(f"add i64 {v('shl i64 %off, 1')}, {1 if self.paged else 0}"))
        self.put(f"%hot = getelementptr i8, ptr {key_ptr}, i64 {8 * (JT_HOT - JT_KEY)}")

    # --- the function ----------------------------------------------------------------
    def emit(self) -> str:
        self.lines.append(f"define i64 @{self.name}({_ARGS}) {{")
        self.start("entry")
        for r in self.used:
            self.put(f"%x{r} = alloca i64")
        self.put("%done = alloca i64")
        self.fp.allocas()
        self.put("%code = getelementptr i8, ptr %ram, i64 %off")
        self.put("%code_page = lshr i64 %off, 12")
        # The code must still be what it was translated from: compared 8 bytes at a time.
        diff = None
        for rel, code in self.code_runs():
            at = 0
            while at < len(code):
                size = next(n for n in (8, 4, 2) if n <= len(code) - at)
                p = self.v(f"getelementptr i8, ptr %code, i64 {rel + at}")
                word = self.v(f"load i{8 * size}, ptr {p}, align 2")
                want = int.from_bytes(code[at : at + size], "little", signed=True)
                x = self.v(f"xor i{8 * size} {word}, {want}")
                if size < 8:
                    x = self.v(f"zext i{8 * size} {x} to i64")
                diff = x if diff is None else self.v(f"or i64 {diff}, {x}")
                at += size
        stale = self.v(f"icmp ne i64 {diff}, 0")
        self.put(f"br i1 {stale}, label %stale, label %fresh, !prof !0")
        self.start("stale")
        # -1 tells the interpreter to drop it; a chaining block gets its own count back.
        self.put(f"store i64 %pc, ptr {self.st_ptr(PC)}")
        first = self.v("icmp eq i64 %done_in, 0")
        self.put(f"ret i64 {self.v(f'select i1 {first}, i64 -1, i64 %done_in')}")
        self.start("fresh")
        if self.count:
            self.hot_counter()
        for r in self.used:
            self.put(f"store i64 {self.v(f'load i64, ptr {self.st_ptr(r)}')}, ptr %x{r}")
        self.fp.load_registers()
        self.put("store i64 %done_in, ptr %done")
        self.put("br label %L0")
        checks = self.budget_checks()
        for start, sub in self.region.blocks.items():
            self.start(f"L{start}".replace("-", "m"))
            self.cur = sub.insns
            n = len(sub.insns)
            if start in checks:
                # Not enough budget left for what may run before the next check:
                # the interpreter goes on from here.
                done = self.v("load i64, ptr %done")
                short = self.v(f"icmp sgt i64 {self.v(f'add i64 {done}, {checks[start]}')}, %maxn")
                stop, go = self.new_label("stop"), self.new_label("go")
                self.put(f"br i1 {short}, label %{stop}, label %{go}, !prof !0")
                self.start(stop)
                self.exit_block(start, 0)
                self.start(go)
                if self.count:  # (what may run up to the next check: loops inside count by iteration)
                    count = self.v(f"add i64 {self.v('load i64, ptr %hot')}, {checks[start]}")
                    self.put(f"store i64 {count}, ptr %hot")
            for i, insn in enumerate(sub.insns):
                if not self.emit_insn(i, insn):
                    break  # a jump or branch ended the sub-block
            else:
                assert sub.next_rel is not None
                self.goto(sub.next_rel, n)
        self.emit_epilogue()
        self.lines.append("}")
        return "\n".join(self.lines) + "\n"

    def budget_checks(self) -> dict[int, int]:
        return budget_checks(self.region)

    def code_runs(self) -> list[tuple[int, bytes]]:
        return code_runs(self.insns)

    def goto(self, target_rel: int, retired: int) -> None:
        """End of a sub-block that goes on at block-relative `target_rel`."""
        if target_rel not in self.region.blocks:
            self.exit_to(target_rel, retired)
            return
        done = self.v("load i64, ptr %done")
        self.put(f"store i64 {self.v(f'add i64 {done}, {retired}')}, ptr %done")
        self.put(f"br label %L{target_rel}".replace("-", "m"))

    # --- memory ----------------------------------------------------------------------
    def ram_pointer(self, i: int, addr: str, size: int, acc: int) -> str:
        """Host pointer for an aligned RAM access at guest `addr`, or a side exit.

        All the reasons to leave (misaligned, TLB miss or no RAM, a store
        into this code's own page) are folded into one test."""
        return self.ram_access(i, addr, size, acc)[0]

    def ram_access(self, i: int, addr: str, size: int, acc: int) -> tuple[str, str]:
        """(host pointer, RAM offset) of an aligned RAM access, as `ram_pointer`."""
        bad = self.v(f"and i64 {addr}, {size - 1}") if size > 1 else None
        if self.paged:
            table = TLB + acc * 2 * TLB_ENTRIES
            index = self.v(f"and i64 {self.v(f'lshr i64 {addr}, 11')}, {2 * TLB_ENTRIES - 2}")
            entry = self.v(f"getelementptr i64, ptr %st, i64 {index}")  # + the table: constant offsets
            tag = self.v(f"load i64, ptr {self.v(f'getelementptr i64, ptr {entry}, i64 {table}')}")
            want = self.v(f"or i64 {self.v(f'and i64 {addr}, -4096')}, %dtag")
            miss = self.v(f"xor i64 {tag}, {want}")
            page = self.v(f"load i64, ptr {self.v(f'getelementptr i64, ptr {entry}, i64 {table + 1}')}")
            off = self.v(f"add i64 {page}, {self.v(f'and i64 {addr}, 4095')}")
        else:
            off = self.v(f"sub i64 {addr}, {RAM_BASE}")
            miss = self.v(f"zext i1 {self.v(f'icmp uge i64 {off}, %ram_size')} to i64")
        bad = miss if bad is None else self.v(f"or i64 {bad}, {miss}")
        if acc == _ACC_STORE:
            same = self.v(f"icmp eq i64 {self.v(f'lshr i64 {off}, 12')}, %code_page")
            bad = self.v(f"or i64 {bad}, {self.v(f'zext i1 {same} to i64')}")
        self.side_exit_if(self.v(f"icmp ne i64 {bad}, 0"), i)
        return self.v(f"getelementptr i8, ptr %ram, i64 {off}"), off

    # --- instructions ------------------------------------------------------------------
    def emit_insn(self, i: int, insn: Insn) -> bool:
        """Emit one instruction; False when it ended the sub-block (a jump or branch)."""
        op, f3, rd = insn.opcode, insn.f3, insn.rd
        v = self.v
        if op == 0x13:
            a = self.get(insn.rs1)
            imm = s64(insn.imm_i)
            if f3 == 0:
                r = v(f"add i64 {a}, {imm}")
            elif f3 == 1:
                r = v(f"shl i64 {a}, {insn.imm_i & 63}")
            elif f3 == 2:
                r = v(f"zext i1 {v(f'icmp slt i64 {a}, {imm}')} to i64")
            elif f3 == 3:
                r = v(f"zext i1 {v(f'icmp ult i64 {a}, {imm}')} to i64")
            elif f3 == 4:
                r = v(f"xor i64 {a}, {imm}")
            elif f3 == 5:
                r = v(f"{'ashr' if (insn.bits >> 30) & 1 else 'lshr'} i64 {a}, {insn.imm_i & 63}")
            elif f3 == 6:
                r = v(f"or i64 {a}, {imm}")
            else:
                r = v(f"and i64 {a}, {imm}")
            self.set(rd, r)
        elif op == 0x1B:
            a = v(f"trunc i64 {self.get(insn.rs1)} to i32")
            sh = insn.rs2  # shamt[4:0]
            if f3 == 0:
                r = v(f"add i32 {a}, {s32(insn.imm_i)}")
            elif f3 == 1:
                r = v(f"shl i32 {a}, {sh}")
            elif insn.f7 == 0:
                r = v(f"lshr i32 {a}, {sh}")
            else:
                r = v(f"ashr i32 {a}, {sh}")
            self.set(rd, v(f"sext i32 {r} to i64"))
        elif op == 0x33:
            self.set(rd, self.op(insn, self.get(insn.rs1), self.get(insn.rs2)))
        elif op == 0x3B:
            self.set(rd, self.op32(insn, self.get(insn.rs1), self.get(insn.rs2)))
        elif op == 0x37:
            self.set(rd, s64(insn.imm_u))
        elif op == 0x17:
            self.set(rd, self.pc_plus(insn.rel + insn.imm_u))
        elif op == 0x03:
            addr = v(f"add i64 {self.get(insn.rs1)}, {s64(insn.imm_i)}")
            size = 1 << (f3 & 3)
            p = self.ram_pointer(i, addr, size, _ACC_LOAD)
            ty = _INT_TYPE[size]
            r = v(f"load {ty}, ptr {p}, align {size}")
            if size < 8:
                r = v(f"{'zext' if f3 >= 4 else 'sext'} {ty} {r} to i64")
            self.set(rd, r)
        elif op == 0x23:
            addr = v(f"add i64 {self.get(insn.rs1)}, {s64(insn.imm_s)}")
            size = 1 << f3
            value = self.get(insn.rs2)
            p = self.ram_pointer(i, addr, size, _ACC_STORE)
            ty = _INT_TYPE[size]
            if size < 8:
                value = v(f"trunc i64 {value} to {ty}")
            self.put(f"store {ty} {value}, ptr {p}, align {size}")
        elif op == 0x0F:
            pass  # fence: nothing to order in a single-threaded emulator
        elif op == 0x2F:
            self.amo(i, insn)
        elif op in _FP_OPS or op == 0x07 or op == 0x27:
            self.emit_fp(i, insn)
        elif op == 0x6F:
            self.set(rd, self.pc_plus(insn.rel + insn.length))
            self.goto(insn.rel + insn.imm_j, i + 1)
            return False
        elif op == 0x67:
            target = v(f"and i64 {v(f'add i64 {self.get(insn.rs1)}, {s64(insn.imm_i)}')}, -2")
            self.set(rd, self.pc_plus(insn.rel + insn.length))
            self.exit_indirect(target, i + 1)
            return False
        elif op == 0x63:
            taken = v(f"icmp {_BRANCH[f3]} i64 {self.get(insn.rs1)}, {self.get(insn.rs2)}")
            t, f = self.new_label("taken"), self.new_label("fall")
            self.put(f"br i1 {taken}, label %{t}, label %{f}")
            self.start(t)
            self.goto(insn.rel + insn.imm_b, i + 1)
            self.start(f)
            self.goto(insn.rel + insn.length, i + 1)
            return False
        else:  # decode only lets through what is handled above
            raise AssertionError(f"untranslatable instruction {insn.bits:#010x}")
        return True

    def amo(self, i: int, insn: Insn) -> None:
        """LR/SC and the AMOs, exactly as the interpreter's `_amo`.

        An LR needs a readable page (the load TLB), an SC or AMO a writable
        one (the store TLB, whose entries exist only for pages that are also
        readable: `mmu.walk` rejects W without R). Misaligned, missed or not
        RAM: the interpreter runs it (and traps). The reservation is the
        physical address in st[RESERVATION]; only LR and SC touch it. Harts
        take turns on one thread, so nothing here needs to be atomic."""
        v = self.v
        size = 4 if insn.f3 == 2 else 8
        ty = _INT_TYPE[size]
        funct5 = insn.bits >> 27
        reservation = self.st_ptr(RESERVATION)
        addr = self.get(insn.rs1)
        if funct5 == 2:  # lr
            p, off = self.ram_access(i, addr, size, _ACC_LOAD)
            old = v(f"load {ty}, ptr {p}, align {size}")
            self.put(f"store i64 {v(f'add i64 {off}, {RAM_BASE}')}, ptr {reservation}")
            self.set(insn.rd, old if size == 8 else v(f"sext {ty} {old} to i64"))
            return
        value = self.get(insn.rs2)
        p, off = self.ram_access(i, addr, size, _ACC_STORE)
        if size < 8:
            value = v(f"trunc i64 {value} to {ty}")
        if funct5 == 3:  # sc: succeeds (rd = 0) only on the reserved address; the reservation goes
            held = v(f"icmp eq i64 {v(f'load i64, ptr {reservation}')}, {v(f'add i64 {off}, {RAM_BASE}')}")
            write, join = self.new_label("sc"), self.new_label("scd")
            self.put(f"br i1 {held}, label %{write}, label %{join}")
            self.start(write)
            self.put(f"store {ty} {value}, ptr {p}, align {size}")
            self.put(f"br label %{join}")
            self.start(join)
            self.put(f"store i64 -1, ptr {reservation}")
            self.set(insn.rd, v(f"select i1 {held}, i64 0, i64 1"))
            return
        old = v(f"load {ty}, ptr {p}, align {size}")
        if funct5 in _AMO_ARITH:
            new = v(f"{_AMO_ARITH[funct5]} {ty} {old}, {value}")
        elif funct5 == 1:  # swap
            new = value
        else:  # min/max, signed or unsigned, on `size` bytes
            keep_old = v(f"icmp {_AMO_KEEP_OLD[funct5]} {ty} {old}, {value}")
            new = v(f"select i1 {keep_old}, {ty} {old}, {ty} {value}")
        self.put(f"store {ty} {new}, ptr {p}, align {size}")
        self.set(insn.rd, old if size == 8 else v(f"sext {ty} {old} to i64"))

    def emit_fp(self, i: int, insn: Insn) -> None:
        """F/D loads, stores and arithmetic (`fpgen`)."""
        self.fp.emit(i, insn)

    def op(self, insn: Insn, a: str, c: str) -> str:
        v = self.v
        f3, f7 = insn.f3, insn.f7
        if f7 == 0:
            if f3 == 1:
                return v(f"shl i64 {a}, {v(f'and i64 {c}, 63')}")
            if f3 == 5:
                return v(f"lshr i64 {a}, {v(f'and i64 {c}, 63')}")
            if f3 in (2, 3):
                cmp = "slt" if f3 == 2 else "ult"
                return v(f"zext i1 {v(f'icmp {cmp} i64 {a}, {c}')} to i64")
            return v(f"{ {0: 'add', 4: 'xor', 6: 'or', 7: 'and'}[f3]} i64 {a}, {c}")
        if f7 == 0x20:
            return v(f"sub i64 {a}, {c}") if f3 == 0 else v(f"ashr i64 {a}, {v(f'and i64 {c}, 63')}")
        # M extension
        if f3 == 0:
            return v(f"mul i64 {a}, {c}")
        if f3 in (1, 2, 3):
            wa = v(f"{'sext' if f3 in (1, 2) else 'zext'} i64 {a} to i128")
            wc = v(f"{'sext' if f3 == 1 else 'zext'} i64 {c} to i128")
            product = v(f"mul i128 {wa}, {wc}")
            return v(f"trunc i128 {v(f'lshr i128 {product}, 64')} to i64")
        return self.divrem(f3, a, c, 64)

    def op32(self, insn: Insn, a: str, c: str) -> str:
        v = self.v
        f3, f7 = insn.f3, insn.f7
        a32, c32 = v(f"trunc i64 {a} to i32"), v(f"trunc i64 {c} to i32")
        if f7 in (0, 0x20) and f3 in (1, 5):
            sh = v(f"and i32 {c32}, 31")
            kind = "shl" if f3 == 1 else ("lshr" if f7 == 0 else "ashr")
            r = v(f"{kind} i32 {a32}, {sh}")
        elif f7 in (0, 0x20):
            r = v(f"{'add' if f7 == 0 else 'sub'} i32 {a32}, {c32}")
        elif f3 == 0:
            r = v(f"mul i32 {a32}, {c32}")
        else:
            r = self.divrem(f3, a32, c32, 32)
        return v(f"sext i32 {r} to i64")

    def divrem(self, f3: int, a: str, c: str, bits: int) -> str:
        """RISC-V division: x/0 = -1 (all ones), x%0 = x, MIN/-1 = MIN, MIN%-1 = 0."""
        v = self.v
        t = f"i{bits}"
        by_zero = v(f"icmp eq {t} {c}, 0")
        if f3 in (4, 6):  # signed
            minv = str(-(1 << (bits - 1)))
            overflow = v(f"and i1 {v(f'icmp eq {t} {a}, {minv}')}, {v(f'icmp eq {t} {c}, -1')}")
            safe = v(f"select i1 {v(f'or i1 {by_zero}, {overflow}')}, {t} 1, {t} {c}")
            if f3 == 4:
                q = v(f"sdiv {t} {a}, {safe}")
                return v(f"select i1 {by_zero}, {t} -1, {t} {v(f'select i1 {overflow}, {t} {a}, {t} {q}')}")
            r = v(f"srem {t} {a}, {safe}")
            return v(f"select i1 {by_zero}, {t} {a}, {t} {v(f'select i1 {overflow}, {t} 0, {t} {r}')}")
        safe = v(f"select i1 {by_zero}, {t} 1, {t} {c}")
        if f3 == 5:
            return v(f"select i1 {by_zero}, {t} -1, {t} {v(f'udiv {t} {a}, {safe}')}")
        return v(f"select i1 {by_zero}, {t} {a}, {t} {v(f'urem {t} {a}, {safe}')}")


def budget_checks(region: Region) -> dict[int, int]:
    """The sub-blocks that check the budget, each with the most
    instructions that can run from it before the next check.

    The entry and every target of a jump back (to a sub-block at or
    before the jump's own) check; a jump forward does not. Every loop
    has a jump back, so between two checks control only goes forward
    and meets each sub-block once at most: it runs at most the longest
    forward path from the check, which the check asks the budget for.
    (A check at every sub-block, as before, was a quarter of a region's
    exits and ~5% of its IR.)"""
    blocks = region.blocks
    targets: dict[int, list[int]] = {}
    for start, sub in blocks.items():
        last = sub.insns[-1]
        nexts = successors(last) if ends_block(last.bits) else [sub.next_rel] if sub.next_rel is not None else []
        targets[start] = [t for t in nexts if t in blocks]
    longest: dict[int, int] = {}
    for start in sorted(blocks, reverse=True):
        ahead = [longest[t] for t in targets[start] if t > start]
        longest[start] = len(blocks[start].insns) + max(ahead, default=0)
    heads = {0} | {t for start, ts in targets.items() for t in ts if t <= start}
    return {h: longest[h] for h in heads if h in blocks}


def code_runs(insns: list[Insn]) -> list[tuple[int, bytes]]:
    """The region's instructions as runs of contiguous bytes: (block-relative start, bytes)."""
    runs: list[tuple[int, bytearray]] = []
    for insn in sorted(insns, key=lambda i: i.rel):
        raw = insn.raw.to_bytes(insn.length, "little")
        if runs and runs[-1][0] + len(runs[-1][1]) == insn.rel:
            runs[-1][1].extend(raw)
        else:
            runs.append((insn.rel, bytearray(raw)))
    return [(rel, bytes(code)) for rel, code in runs]
