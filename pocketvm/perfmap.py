"""Name the numba core's functions for `perf`: a developer's tool.

perf samples the VM process, but the interpreter (numba's compiled core)
and translated code (tier 1) both run from anonymous memory, so perf
cannot tell them apart. Run `pocket` through this module instead:

    python -m pocketvm.perfmap -v run --jit on ...     # then, in another shell:
    perf record -p PID ...; perf report                 # PID: the VM's

Once the core is compiled it writes /tmp/perf-PID.map (perf's format for
JIT code), naming every numba function of pocketvm.cpu; samples elsewhere
in anonymous memory are translated code. numba keeps a function's object
code only when it compiled it in this process, so the core is compiled
afresh into a temporary NUMBA_CACHE_DIR (20-40 s) unless one is given. With
NUMBA_DEBUGINFO=1 as well, the objects written next to the map (FILE.o,
for `objdump -dl`) carry source lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def dispatcher_symbols(modules: dict[str, object], out_dir: Path) -> list[tuple[int, int, str]]:
    """(address, size, name) of every compiled numba function in `modules`
    whose object code this process has; each object is written to out_dir."""
    from numba.core.registry import CPUDispatcher

    found = []
    for mname, mod in modules.items():
        for attr, d in list(vars(mod).items()):
            if not isinstance(d, CPUDispatcher):
                continue
            for ov in list(d.overloads.values()):
                try:
                    obj = ov.library._get_compiled_object()
                except RuntimeError:  # loaded from numba's cache: no object kept
                    continue
                name = f"{mname}.{attr}"
                path = out_dir / f"{name}.o"
                path.write_bytes(obj)
                syms = subprocess.run(["nm", "-S", "--defined-only", str(path)], capture_output=True, text=True).stdout
                for line in syms.splitlines():
                    p = line.split()
                    if len(p) == 4 and p[3] == ov.fndesc.llvm_func_name:
                        found.append((ov.library.get_pointer_to_function(ov.fndesc.llvm_func_name), int(p[1], 16), name))
    return sorted(found)


def _write_map_when_compiled(out_dir: Path) -> None:
    # Never imports: an import from this thread while the main one imports broke tier 1's set-up.
    while True:
        core = sys.modules.get("pocketvm.cpu.core")
        if core is not None and getattr(core, "run_released", None) is not None and core.run_released.overloads:
            break
        time.sleep(0.2)
    mods = {n: m for n, m in list(sys.modules.items()) if n.startswith("pocketvm.cpu") and m is not None}
    entries = dispatcher_symbols(mods, out_dir)
    path = Path(f"/tmp/perf-{os.getpid()}.map")
    path.write_text("".join(f"{a:x} {s:x} {n}\n" for a, s, n in entries))
    print(f"perfmap: {len(entries)} functions in {path}, objects in {out_dir}", file=sys.stderr)


def main() -> None:
    if not os.environ.get("NUMBA_CACHE_DIR"):
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="pocketvm-perfmap-numba-")
    os.environ["POCKETVM_NATIVE_CORE"] = "off"  # the map names numba's functions: the prebuilt core has none
    out_dir = Path(tempfile.mkdtemp(prefix="pocketvm-perfmap-objects-"))
    threading.Thread(target=_write_map_when_compiled, args=(out_dir,), daemon=True).start()
    from pocketvm.main import main as pocket

    sys.argv = ["pocket", *sys.argv[1:]]
    pocket()


if __name__ == "__main__":
    main()
