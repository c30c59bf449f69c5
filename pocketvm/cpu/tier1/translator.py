"""Regions to relocatable machine code (an object file per batch).

The code of a batch is emitted as an ELF object, not into a JIT engine:
the process that runs the guest loads it (`engine`), the cache keeps it
(`objcache`), and it may be compiled in another process (`service`). That
works because translated code holds no host address (the table is an
argument, see `native_call`), only its position in guest RAM.

`VERSION` names everything that shapes the machine code: the translator's
own sources, LLVM's version, the target and its options. Objects from
another version are never loaded.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import llvmlite  # its version only: LLVM itself (llvmlite.binding) is loaded where code is compiled
import numpy as np

from pocketvm.cpu.tier1 import x86
from pocketvm.cpu.tier1.asmgen import AsmCodegen, can_assemble
from pocketvm.cpu.tier1.codegen import FP_OPS, BlockCodegen, module_text
from pocketvm.cpu.tier1.decode import Region
from pocketvm.cpu.tier1.objcache import cache_root
from pocketvm.paths import cache_dir

if TYPE_CHECKING:
    import llvmlite.binding as llvm

# Two ways to compile (`Tier`): quickly for code that is only warm (fast
# instruction selection at -O0 and SROA alone: ~2.3 ms for a region of 40
# instructions), well for code that is hot (SROA, instcombine, CFG
# simplification and GVN, then -O2 code generation: ~23 ms, the hash loop of
# benchmarks/cpu.py at 3500 instead of 1800 MIPS). LLVM's whole -O2 pipeline
# took ~38 ms (its passes 21 ms of it, against 6.5) for objects of the same
# size (150 regions of a boot), and the code it made ran no faster: the
# programs of benchmarks/cpu.py with a warm cache, 4x their work, two runs
# each: hash 3500-3505 MIPS against 3198-3669, sort 1040-1171 against
# 1202-1224, vm 1201-1259 against 1323-1389. Per tier: code generation's
# opt level, the IR pipeline, whether guest registers stay in `st`
# (`BlockCodegen`'s in_state).
# Quickly compiled code keeps them in `st`: in allocas that SROA promotes,
# the -O0 register allocator spills them again at every block boundary,
# and the quick tier compiled 15% slower into code that was no faster.
# Nothing in the quick tier may make FastISel fall back to SelectionDAG
# (an i1 select did, in every function: half its code generation time);
# what still does is the chaining tail call and the i128 of mulh.
QUICK = 0
GOOD = 1
_SETTINGS = {
    QUICK: (
        int(os.environ.get("POCKETVM_JIT_CGOPT", "0")),
        os.environ.get("POCKETVM_JIT_PIPELINE", "sroa"),
        os.environ.get("POCKETVM_JIT_IN_STATE", "1") == "1",
    ),
    GOOD: (
        int(os.environ.get("POCKETVM_JIT_HOT_CGOPT", "2")),
        os.environ.get("POCKETVM_JIT_HOT_PIPELINE", "gvn"),
        os.environ.get("POCKETVM_JIT_HOT_IN_STATE", "0") == "1",
    ),
}

# Code compiled quickly is written as assembly (`asmgen`) and assembled
# here (`x86`) where it can be, without LLVM: ~1.1 ms for a region of 45
# instructions instead of ~3.5 ms.
ASSEMBLE = os.environ.get("POCKETVM_JIT_ASM", "1") == "1"

_llvm_lock = threading.Lock()
_llvm_ready = False


def init_llvm() -> None:
    import llvmlite.binding as llvm

    global _llvm_ready
    with _llvm_lock:
        if not _llvm_ready:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            _llvm_ready = True


@functools.cache
def host_target() -> tuple[str, str]:
    """This host's CPU as LLVM names it, and its features: translations are
    made for it (they never leave it), so the F/D fast paths (`fpgen`) get
    FMA instructions instead of calls to libm's fma."""
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def _llvm_identity_from_llvm() -> str:
    import llvmlite.binding as llvm

    cpu, features = host_target()
    return f"{llvm.llvm_version_info} {llvm.get_process_triple()} {cpu} {features}"


def _host_key() -> str | None:
    """This host's CPU and llvmlite, named without loading LLVM (None: unknown here)."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        return None
    fields = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags", "isa", "uarch")
    lines = [line for line in first.splitlines() if line.split(":", 1)[0].strip() in fields]
    if not lines:
        return None
    ident = f"{llvmlite.__version__} {platform.machine()} {sys.platform}\n" + "\n".join(lines)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _memo_path() -> Path | None:
    """Beside the cache files (in pocketvm's cache if the translation cache is off)."""
    key = _host_key()
    return (cache_root() or cache_dir() / "jit") / f"llvm-host-{key}.txt" if key else None


def llvm_identity() -> str:
    """LLVM's version and target, and the host CPU it compiles for: what
    translated code depends on besides our sources. Asking LLVM means
    loading it (~0.1 s of a VM's start and ~40 MiB of its memory), which a
    VM that finds its code in the cache never needs: the answer is kept per
    host (`_host_key`), and the service, which loads LLVM anyway, mends a
    wrong one (`check_llvm_identity`)."""
    memo = _memo_path()
    if memo is not None:
        try:
            return memo.read_text()
        except OSError:
            pass
    ident = _llvm_identity_from_llvm()
    _write_memo(memo, ident)
    return ident


def check_llvm_identity() -> None:
    """Where LLVM is loaded: keep the memo right for the processes to come."""
    ident = _llvm_identity_from_llvm()
    memo = _memo_path()
    if ident != LLVM_IDENTITY:
        _write_memo(memo, ident)


def _write_memo(memo: Path | None, ident: str) -> None:
    if memo is None:
        return
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f"{memo.name}.{os.getpid()}")
        tmp.write_text(ident)
        tmp.replace(memo)
    except OSError:
        pass  # a read-only cache: asked of LLVM each time


def _version() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in ("asmgen.py", "codegen.py", "decode.py", "fpgen.py", "layout.py", "translator.py", "x86.py"):
        h.update(name.encode())
        h.update((here / name).read_bytes())
    h.update((here.parent / "state.py").read_bytes())
    h.update(f"{llvmlite.__version__} {LLVM_IDENTITY}".encode())
    h.update(repr(sorted(_SETTINGS.items())).encode())
    h.update(f"asm {ASSEMBLE}".encode())
    return h.hexdigest()[:16]


LLVM_IDENTITY = llvm_identity()


VERSION = _version()


_SIG = struct.Struct("<iI")  # an instruction: offset from the start of its page, its bits in RAM


def code_signature(off: int, region: Region) -> bytes:
    """What a region's translation was made from: every instruction's place in
    its page and bits (its entry and mode are the cache's index)."""
    base = off & 0xFFF
    return b"".join(_SIG.pack(base + i.rel, i.raw) for i in region.insns)


def entry_key(off: int, paged: bool, page: bytes) -> int:
    """The cache's index for a region entered at RAM offset `off`: its place in
    the page, whether its loads and stores are translated, its first instruction."""
    at = off & 0xFFF
    raw = int.from_bytes(page[at : at + 2], "little")
    if (raw & 3) == 3 and at + 4 <= len(page):
        raw = int.from_bytes(page[at : at + 4], "little")
    return (at << 33) | (int(paged) << 32) | raw


def entry_key_in_ram(ram16: np.ndarray, off: int, paged: bool) -> int:
    """`entry_key` of the region at RAM offset `off`, read from guest RAM (16-bit view)."""
    raw = int(ram16[off >> 1])
    if (raw & 3) == 3 and (off & 0xFFF) + 4 <= 0x1000:
        raw |= int(ram16[(off >> 1) + 1]) << 16
    return ((off & 0xFFF) << 33) | (int(paged) << 32) | raw


def calls_fpu(signature: bytes, ctab: np.ndarray) -> bool:
    """Whether the region with this signature has FP arithmetic (which calls the FPU)."""
    for _, raw in _SIG.iter_unpack(signature):
        bits = raw if (raw & 3) == 3 else int(ctab[raw & 0xFFFF]) & 0xFFFFFFFF
        if (bits & 0x7F) in FP_OPS:
            return True
    return False


def code_matches(signature: bytes, page: bytes) -> bool:
    """Whether a page still holds every instruction of `signature`."""
    if len(signature) % _SIG.size:
        return False
    for at, raw in _SIG.iter_unpack(signature):
        size = 4 if (raw & 3) == 3 else 2
        if not 0 <= at <= len(page) - size or int.from_bytes(page[at : at + size], "little") != raw:
            return False
    return True


@dataclass
class CompileTimes:
    ir: float = 0.0
    opt: float = 0.0
    code: float = 0.0
    assembled: int = 0  # regions written as assembly (`asmgen`), not as IR


class ObjectCompiler:
    """LLVM, set up once: a batch of regions in, an object file out."""

    def __init__(self, verify: bool = True) -> None:
        """`verify`: check each module's IR before compiling it (a few percent
        of the time; the tests, which run the translator in-process, do)."""
        import llvmlite.binding as llvm

        self._llvm = llvm
        self._verify = verify
        init_llvm()
        check_llvm_identity()
        target = llvm.Target.from_default_triple()
        cpu, features = host_target()
        self._bmi2 = "+bmi2" in features.split(",")
        self._tm = {
            tier: target.create_target_machine(cpu=cpu, features=features, opt=cg, jit=True)
            for tier, (cg, _, _) in _SETTINGS.items()
        }
        self._pto = llvm.create_pipeline_tuning_options(speed_level=2)
        self._pb = llvm.create_pass_builder(self._tm[GOOD], self._pto)

    def compile(self, regions: list[tuple[str, int, bool, Region]], times: CompileTimes, tier: int = QUICK) -> bytes:
        """Regions as (function name, RAM offset, paged, region) -> ELF object."""
        t0 = time.thread_time()
        if regions and all(self.assembles(region, tier) for _, _, _, region in regions):
            text = "\n".join(AsmCodegen(name, off, paged, region).emit() for name, off, paged, region in regions)
            t1 = time.thread_time()
            try:
                obj = x86.relocatable_object(*x86.assemble(text))
            except x86.AsmError:  # (a form asmgen should not write: LLVM makes the code instead)
                pass
            else:
                times.ir += t1 - t0
                times.code += time.thread_time() - t1
                times.assembled += len(regions)
                return obj
        functions = [
            BlockCodegen(name, off, paged, region, in_state=_SETTINGS[tier][2], count=tier == QUICK).emit()
            for name, off, paged, region in regions
        ]
        llvm = self._llvm
        text = module_text(llvm.get_process_triple(), functions)
        t1 = time.thread_time()
        mod = llvm.parse_assembly(text)
        if self._verify:
            mod.verify()
        self._optimise(mod, _SETTINGS[tier][1])
        t2 = time.thread_time()
        obj = self._tm[tier].emit_object(mod)
        t3 = time.thread_time()
        times.ir += t1 - t0
        times.opt += t2 - t1
        times.code += t3 - t2
        return bytes(obj)

    def assembles(self, region: Region, tier: int) -> bool:
        """Whether `compile` writes this region's code itself (`asmgen`, `x86`)
        rather than through LLVM: a batch is all one or all the other."""
        return tier == QUICK and ASSEMBLE and can_assemble(region, self._bmi2)

    def _optimise(self, mod: llvm.ModuleRef, pipeline: str) -> None:
        """`pipeline`: "sroa", "light" (and instcombine, CFG simplification),
        "gvn" (and GVN), "o2" (LLVM's), "none"."""
        if pipeline == "o2":
            self._pb.getModulePassManager().run(mod, self._pb)
            return
        if pipeline == "none":
            return
        fpm = self._llvm.create_new_function_pass_manager()
        fpm.add_sroa_pass()
        if pipeline in ("light", "gvn"):
            fpm.add_instruction_combine_pass()
            fpm.add_simplify_cfg_pass()
        if pipeline == "gvn":
            fpm.add_new_gvn_pass()
            fpm.add_instruction_combine_pass()
        if pipeline != "sroa":
            fpm.add_dead_code_elimination_pass()
        for f in mod.functions:
            if not f.is_declaration:
                fpm.run(f, self._pb)
