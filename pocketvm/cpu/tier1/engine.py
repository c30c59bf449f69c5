"""Compiling queued blocks and installing them in the translation table.

One `Tier1` serves all harts of a machine (translations depend on guest RAM
only, never on a hart's state). The numba core queues hot blocks in the
table; after each run() call the hart asks the engine to translate what is
queued: every block of the batch goes into one LLVM module, compiled by
llvmlite's MCJIT, and the entry addresses go into the table. Compiled code
is never freed (a replaced block's code stays in memory, unreachable);
translations are few and small next to guest RAM.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Callable

import llvmlite.binding as llvm
import numpy as np

from pocketvm.cpu.tier1 import layout as L
from pocketvm.cpu.tier1.codegen import BlockCodegen, module_text
from pocketvm.cpu.tier1.decode import decode_region

log = logging.getLogger(__name__)

ENV_VAR = "POCKETVM_JIT"
# A region shorter than this is left to the interpreter: calling native code
# and writing registers back costs more than a few instructions save (the
# FPU benchmark, whose integer fragments between FP instructions are short,
# ran 5% slower when they were translated). Mode "all" (testing) translates
# them all the same.
MIN_REGION = int(os.environ.get("POCKETVM_JIT_MIN_REGION", "4"))
MODES = {"off": L.MODE_OFF, "on": L.MODE_ON, "all": L.MODE_ALL}

_llvm_lock = threading.Lock()
_llvm_ready = False


def _init_llvm() -> None:
    global _llvm_ready
    with _llvm_lock:
        if not _llvm_ready:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            _llvm_ready = True


def mode_from_env(default: str = "off") -> int:
    """The tier-1 mode named by POCKETVM_JIT (off | on | all), or `default`."""
    name = os.environ.get(ENV_VAR, default).strip().lower() or default
    if name not in MODES:
        raise ValueError(f"{ENV_VAR}={name!r}: expected one of {', '.join(MODES)}")
    return MODES[name]


@dataclass
class Stats:
    blocks: int = 0
    instructions: int = 0
    empty: int = 0  # hot places where nothing could be translated
    batches: int = 0
    compile_seconds: float = 0.0
    ir_seconds: float = 0.0  # of which: generating the IR (Python)
    opt_seconds: float = 0.0  # LLVM's optimisation passes
    codegen_seconds: float = 0.0  # machine code

    def summary(self, stale: int) -> str:
        return (
            f"tier 1: {self.blocks} blocks ({self.instructions} instructions) in {self.batches} batches, "
            f"{self.compile_seconds:.2f} s compiling (IR {self.ir_seconds:.2f}, optimisation {self.opt_seconds:.2f}, "
            f"code {self.codegen_seconds:.2f}), {stale} invalidated"
        )


class Tier1:
    """Translations for one machine. In mode "on" a worker thread compiles
    while the harts run (the core releases the GIL, see `core.run_released`)
    and finished blocks are installed by the hart's thread between two run()
    calls, so the core never sees the table change under it. Mode "all"
    compiles at once, on the hart's thread."""

    def __init__(self, mode: int, threshold: int | None = None):
        _init_llvm()
        if threshold is None:  # entries of a block before it is translated (tuning knob)
            threshold = int(os.environ.get("POCKETVM_JIT_THRESHOLD", "1000"))
        self.table = L.new_table(mode, threshold)
        self.stats = Stats()
        target = llvm.Target.from_default_triple()
        self._pipeline = os.environ.get("POCKETVM_JIT_PIPELINE", "min")
        # Fast instruction selection: codegen at -O0 takes a fifth of the
        # time of -O2 and the code ran within 10% (benchmarks/cpu.py).
        self._tm = target.create_target_machine(opt=int(os.environ.get("POCKETVM_JIT_CGOPT", "0")), jit=True)
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), self._tm)
        self._pto = llvm.create_pipeline_tuning_options(speed_level=2)
        self._pb = llvm.create_pass_builder(self._tm, self._pto)
        self._serial = 0
        from pocketvm.cpu.tier1.fp_helper import fp_entry_address  # compiled (or loaded from cache) here

        self._fp_entry = fp_entry_address()
        self.background = mode == L.MODE_ON
        self._todo: queue.SimpleQueue[tuple[list[int], np.ndarray, np.ndarray] | None] = queue.SimpleQueue()
        self._done: deque[list[tuple[int, int]]] = deque()
        self._worker: threading.Thread | None = None
        self._stopping = False

    @property
    def mode(self) -> int:
        return int(self.table[L.JT_MODE])

    def service(self, ram16: np.ndarray, ctab: np.ndarray) -> None:
        """Between two run() calls: install what is compiled, hand over what is queued."""
        table = self.table
        while self._done:
            for key, fn in self._done.popleft():
                self._install(key, fn)
        count = int(table[L.JT_QLEN])
        if not count:
            return
        keys = sorted({int(k) for k in table[L.JT_QUEUE : L.JT_QUEUE + count]})
        table[L.JT_QLEN] = 0
        if not self.background:
            for key, fn in self.compile(keys, ram16, ctab):
                self._install(key, fn)
            return
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="pocketvm-tier1", daemon=True)
            self._worker.start()
        self._todo.put((keys, ram16, ctab))

    def _work(self) -> None:
        while True:
            item = self._todo.get()
            if item is None or self._stopping:
                return
            keys, ram16, ctab = item
            try:
                self._done.append(self.compile(keys, ram16, ctab))
            except Exception:  # a translator bug must not take the VM down: those blocks stay interpreted
                log.exception("tier 1 could not translate blocks %s", [hex(k >> 1) for k in keys])

    def report(self) -> str:
        """One line of statistics (`pocket -v run --jit on` logs it at the end)."""
        t = self.table
        return (
            self.stats.summary(int(t[L.JT_STALE]))
            + f"; {int(t[L.JT_NATIVE])} instructions in translated code, {int(t[L.JT_CALLS])} calls from the interpreter"
        )

    def close(self) -> None:
        """Stop the compiler thread; work still queued is dropped (a VM that
        ends does not wait for translations it will never run)."""
        if self._worker is not None:
            self._stopping = True
            self._todo.put(None)
            self._worker.join(timeout=5)
            self._worker = None

    def compile(self, keys: list[int], ram16: np.ndarray, ctab: np.ndarray) -> list[tuple[int, int]]:
        """Translate the blocks with these keys: [(key, native address or 0 for nothing to run)]."""
        t0 = time.process_time()
        functions: list[str] = []
        names: dict[int, str] = {}
        result: list[tuple[int, int]] = []
        for key in keys:
            off, paged = key >> 1, bool(key & 1)
            region = decode_region(ram16, ctab, off, taken=self._seen_taken(off))
            if not region.blocks or (self.background and region.size < MIN_REGION):
                result.append((key, 0))
                self.stats.empty += 1
                continue
            name = f"b{self._serial}_{key:x}"
            functions.append(BlockCodegen(name, off, paged, region, self.table.ctypes.data, self._fp_entry).emit())
            names[key] = name
            self.stats.instructions += region.size
        self._serial += 1
        if names:
            text = module_text(llvm.get_process_triple(), functions)
            t1 = time.process_time()
            self.stats.ir_seconds += t1 - t0
            mod = llvm.parse_assembly(text)
            mod.verify()
            self._optimise(mod)
            t2 = time.process_time()
            self.stats.opt_seconds += t2 - t1
            self._engine.add_module(mod)
            self._engine.finalize_object()
            self.stats.codegen_seconds += time.process_time() - t2
            result += [(key, self._engine.get_function_address(name)) for key, name in names.items()]
            self.stats.blocks += len(names)
            self.stats.batches += 1
        self.stats.compile_seconds += time.process_time() - t0
        return result

    def _seen_taken(self, off: int) -> Callable[[int], bool]:
        """Whether the interpreter counted entries at block-relative `rel` (or a block is there)."""
        table = self.table

        def taken(rel: int) -> bool:
            slot = L.slot_index(off + rel)
            return bool(table[L.JT_HOT + slot] != 0 or (int(table[L.JT_KEY + slot]) >> 1) == off + rel)

        return taken

    def _optimise(self, mod: llvm.ModuleRef) -> None:
        if self._pipeline == "o2":
            self._pb.getModulePassManager().run(mod, self._pb)
            return
        if self._pipeline == "none":
            return
        fpm = llvm.create_new_function_pass_manager()
        fpm.add_sroa_pass()
        if self._pipeline == "light":
            fpm.add_instruction_combine_pass()
        fpm.add_simplify_cfg_pass()
        fpm.add_dead_code_elimination_pass()
        for f in mod.functions:
            if not f.is_declaration:
                fpm.run(f, self._pb)

    def _install(self, key: int, fn: int) -> None:
        slot = L.slot_index(key >> 1)
        self.table[L.JT_KEY + slot] = key
        self.table[L.JT_FN + slot] = fn
        self.table[L.JT_HOT + slot] = 0


_shared: "weakref.WeakKeyDictionary[object, Tier1]" = weakref.WeakKeyDictionary()


def tier1_for(ram: object, mode: int) -> Tier1:
    """The Tier1 of the machine that owns `ram` (created on first use)."""
    t = _shared.get(ram)
    if t is None or t.mode != mode:
        t = Tier1(mode)
        _shared[ram] = t
    return t


OFF_TABLE = L.new_table(L.MODE_OFF)
