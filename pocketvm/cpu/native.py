"""The CPU core built ahead of time: a shared library a VM loads without numba.

numba compiles the core once and caches it, but every `pocket` process
still pays for numba itself: its import (~0.23 s here) and loading the
cached core (~0.17 s) are a sixth of a Debian boot with a warm translation
cache. `build()` has numba compile the core's entry (`core.run`, everything
it calls inlined or linked in) and the FPU's C entry for translated code
(`tier1.fp_helper`) as C functions, and links them into one shared library
under ~/.cache/pocketvm/core/, named after the digest of the core's sources,
numba's version and this host's CPU (the code uses its instruction set).
`setup.sh` builds it. `prefer()`, called by `pocket` before it imports the
core, loads it when it is there and up to date; a VM then calls it through
ctypes and never imports numba. A `pocket` command that runs a VM calls
`ensure()` instead, which first builds a missing, stale or damaged library
(after an update, say): numba's core would otherwise compile at the
guest's first instruction, for as long, in silence. Without it
(POCKETVM_NATIVE_CORE=off, NUMBA_DISABLE_JIT=1, no linker, a failed
build) everything runs through numba as before.

The library has no entry points of numba's runtime: the core never
allocates, raises or takes the GIL (`jit.core_jit`), and the few runtime
functions numba's C wrapper still names, on error paths the core never
takes, are defined to trap.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pocketvm.cpu import source_digest
from pocketvm.paths import cache_dir

RUN_SYMBOL = "pocketvm_core_run"
FP_SYMBOL = "pocketvm_fp_entry"

# run(st, sh, sh_len, ram, ram_size, ctab, jt, budget) -> exit reason
_ARGS = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
         ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]


def _host_cpu() -> bytes:
    """What the compiled code depends on of this host: its CPU's model and flags."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            text = f.read()
    except OSError:
        return b"unknown cpu"
    lines = [ln for ln in text.splitlines() if ln.startswith((b"model name", b"flags"))]
    return b"\n".join(sorted(set(lines)))


def library_path() -> Path:
    h = hashlib.sha256(source_digest().encode())
    h.update(Path(__file__).read_bytes())
    h.update(_host_cpu())
    h.update(sys.version.encode())  # its error paths name the C API of this Python
    return cache_dir() / "core" / f"core-{h.hexdigest()[:16]}.so"


class NativeCore:
    """The loaded library: `run` holds the GIL during a call, `run_released` lets go of it."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.lib = lib
        self.path = path
        address = ctypes.cast(getattr(lib, RUN_SYMBOL), ctypes.c_void_p).value
        self.run = ctypes.PYFUNCTYPE(ctypes.c_int64, *_ARGS)(address)
        self.run_released = ctypes.CFUNCTYPE(ctypes.c_int64, *_ARGS)(address)
        self.fp_entry = ctypes.cast(getattr(lib, FP_SYMBOL), ctypes.c_void_p).value or 0


_loaded: NativeCore | None = None


def loaded() -> NativeCore | None:
    """The prebuilt core if `prefer()` loaded it in this process."""
    return _loaded


def prefer() -> bool:
    """Run the prebuilt core in this process if it is there and up to date.

    Must come before any module of the core is imported: those imported
    later stay plain Python (`jit.use_plain`), which only the prebuilt
    core makes safe."""
    global _loaded
    if _loaded is not None:
        return True
    if not _may_load():
        return False
    path = library_path()
    if not _intact(path):
        return False
    try:
        core = NativeCore(ctypes.CDLL(str(path)), path)
    except (OSError, AttributeError):
        return False
    from pocketvm.cpu import jit

    jit.use_plain()
    _loaded = core
    return True


def ensure(notice: Callable[[str], None]) -> bool:
    """`prefer()`, after building the library if it is missing, stale or
    damaged; `notice` gets a line to show the user before a build and if it
    fails. The build runs in a process of its own: it imports the core
    under numba, which `prefer` must find not imported."""
    if prefer():
        return True
    if not _may_load():
        return False
    if shutil.which("ld") is None:
        notice("pocket: no prebuilt CPU core, and no linker to build one (ld, Debian package binutils): "
               "numba compiles the core at the first instruction (about 30 s)")
        return False
    notice("pocket: building the CPU core for this host, once (about 30 s; setup.sh does it ahead)...")
    why = build_elsewhere()
    if why is not None:
        notice(f"pocket: the CPU core could not be built ({why}): numba's runs instead")
        return False
    return prefer()


def build_elsewhere(env: dict[str, str] | None = None) -> str | None:
    """`build()` in a process of its own (`main`): None once the library is
    there, else why not (its last line of errors)."""
    done = subprocess.run([sys.executable, "-m", "pocketvm.cpu.native"], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, env=env)
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or ["no reason given"])[-1]


def _may_load() -> bool:
    """Whether this process may still run the prebuilt core: it is not turned
    off, and no module of the core is imported yet (under numba)."""
    if os.environ.get("POCKETVM_NATIVE_CORE", "on") == "off" or os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"):
        return False
    return not any(name.startswith("pocketvm.cpu.") and name not in (__name__, "pocketvm.cpu.jit") for name in sys.modules)


def digest_path(path: Path) -> Path:
    """Where the library's SHA-256 is kept (written last by `build`)."""
    return path.with_name(path.name + ".sha256")


def available() -> bool:
    """Whether an intact library for these sources is built (`prefer` would load it)."""
    return _intact(library_path())


def _intact(path: Path) -> bool:
    """Whether the library is there as built: loading a damaged one (a truncated
    copy, a disk error) can kill the process with SIGBUS instead of failing."""
    try:
        data = path.read_bytes()
        want = digest_path(path).read_text().strip()
    except OSError:
        return False
    return hashlib.sha256(data).hexdigest() == want


def describe() -> str:
    """Which core this process runs, for `pocket -v`."""
    if _loaded is not None:
        return f"CPU core: prebuilt ({_loaded.path})"
    return "CPU core: numba's (no prebuilt one is loaded: `python -m pocketvm.cpu.native` builds it)"


class BuildError(Exception):
    pass


def build(path: Path | None = None) -> Path:
    """Compile the core with numba and link it into `path` (default: `library_path()`)."""
    import llvmlite.binding as ll

    from pocketvm.cpu.jit import numba

    nb = numba()
    if nb.config.DISABLE_JIT:
        raise BuildError("NUMBA_DISABLE_JIT is set: there is no compiled core to build")
    from numba import carray, cfunc, types

    from pocketvm.cpu.core import run
    from pocketvm.cpu.rvc import expansion_table
    from pocketvm.cpu.state import STATE_SIZE
    from pocketvm.cpu.tier1.fp_helper import FP_ENTRY_SIG, fp_entry_body
    from pocketvm.cpu.tier1.layout import TABLE_SIZE

    path = path or library_path()
    linker = shutil.which("ld")
    if linker is None:
        raise BuildError("no linker (ld, Debian package binutils) to build the CPU core with")
    expansion_table()  # cached as a file too: a VM without numba would build it in plain Python

    p64 = types.CPointer(types.int64)
    sig = types.int64(p64, p64, types.int64, types.CPointer(types.uint8), types.int64,
                      types.CPointer(types.int32), p64, types.int64)

    @cfunc(sig, error_model="numpy")
    def core_entry(stp, shp, sh_len, ramp, ram_size, ctabp, jtp, budget):  # type: ignore[no-untyped-def]
        st = carray(stp, (STATE_SIZE,))
        ram = carray(ramp, (ram_size,))
        return run(st, st.view(np.float64), st.view(np.float32), carray(shp, (sh_len,)), ram,
                   ram.view(np.uint16), ram.view(np.uint32), ram.view(np.int64), carray(ctabp, (65536,)),
                   budget, carray(jtp, (TABLE_SIZE,)))

    # A cfunc of its own: the cached one's library holds no IR to link in.
    fp_entry = cfunc(FP_ENTRY_SIG, error_model="numpy")(fp_entry_body)

    module = ll.parse_assembly(str(core_entry._library._final_module))
    module.get_function(core_entry.native_name).name = RUN_SYMBOL
    fp_module = ll.parse_assembly(str(fp_entry._library._final_module))
    fp_module.get_function(fp_entry.native_name).name = FP_SYMBOL
    module.link_in(fp_module)
    module.link_in(ll.parse_assembly(_trap_stubs(module)))
    module.verify()
    machine = ll.Target.from_default_triple().create_target_machine(
        cpu=ll.get_host_cpu_name(), features=ll.get_host_cpu_features().flatten(), opt=3, reloc="pic",
        codemodel="default",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        obj = Path(tmp) / "core.o"
        obj.write_bytes(machine.emit_object(module))
        script = Path(tmp) / "exports"
        script.write_text("{ global: %s; %s; local: *; };\n" % (RUN_SYMBOL, FP_SYMBOL))
        out = Path(tmp) / "core.so"
        done = subprocess.run([linker, "-shared", "--version-script", str(script), "-o", str(out), str(obj)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"linking the CPU core failed: {done.stderr.strip()}")
        digest = Path(tmp) / "core.so.sha256"
        digest.write_text(hashlib.sha256(out.read_bytes()).hexdigest() + "\n")
        os.replace(out, path)
        os.replace(digest, digest_path(path))  # last: the library counts as built from here on
    return path


def _trap_stubs(module) -> str:  # type: ignore[no-untyped-def]
    """Definitions for the runtime functions numba's C wrapper names (see the module's text)."""
    stubs = ["declare void @llvm.trap()"]
    for fn in module.functions:
        if fn.is_declaration and fn.name.startswith(("NRT_", "numba_")):
            ret, _, params = str(fn.global_value_type).partition(" (")
            names = [f"{t.strip()} %a{i}" for i, t in enumerate(params.rstrip(")").split(",")) if t.strip()]
            stubs.append(f"define {ret} @{fn.name}({', '.join(names)}) {{\n  call void @llvm.trap()\n  unreachable\n}}")
    return "\n".join(stubs) + "\n"


def main() -> int:
    """`python -m pocketvm.cpu.native`: build the library unless it is there (`--force`: build it again)."""
    import fcntl

    path = library_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time: VMs started together wait for the first one's build.
    with open(path.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _intact(path) and "--force" not in sys.argv[1:]:
            print(f"CPU core: {path} (up to date)")
            return 0
        try:
            build(path)
        except BuildError as e:
            print(f"pocketvm: {e}", file=sys.stderr)
            return 1
    print(f"CPU core: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
