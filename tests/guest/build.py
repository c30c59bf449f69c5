"""Build the bare-metal guest programs under src/ into build/.

Every `*.c` or `*.S` directly in src/ is one program, linked with the shared
runtime in src/rt/ (start-up code, UART output, checks, trap handlers) and
loaded at 0x80000000.  Rebuilds are incremental: a program is recompiled
only when one of its inputs (per the compiler's dependency file), the
runtime or the flags changed.

Programs elsewhere in the repository use the same flags: `build_source()`
builds one with the runtime, `cross_compile()` one that brings its own
start-up code and linker script (the snapshot tests, benchmarks/cpu.py).

Run as a script to build everything (or the named programs):
    .venv/bin/python tests/guest/build.py [-v] [NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC_DIR = HERE / "src"
RT_DIR = SRC_DIR / "rt"
BUILD_DIR = HERE / "build"
LINKER_SCRIPT = RT_DIR / "link.ld"
RT_SOURCES = (RT_DIR / "crt0.S", RT_DIR / "rt.c")
GEN_DIR = BUILD_DIR / "gen"
# Generated headers: name -> generator script (a module with generate() -> str).
GENERATED = {"alu_vectors.h": HERE / "gen_vectors.py"}

CROSS = os.environ.get("GUEST_CROSS", "riscv64-linux-gnu-")
CC = CROSS + "gcc"
OBJDUMP = CROSS + "objdump"
# Base flags of every program built through this module: there is no C
# library to link against or start-up code to run, and the compiler must not
# invent calls to one (stack protector, memset/memcpy for loops).
BARE_METAL_CFLAGS = [
    "-march=rv64gc",
    "-mabi=lp64d",
    "-mcmodel=medany",
    "-static",
    "-nostdlib",
    "-nostartfiles",
    "-ffreestanding",
    "-fno-pic",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-tree-loop-distribute-patterns",
    "-O2",
    "-Wall",
    "-Werror",
]
# The linker scripts put code, data and stack in one segment on purpose.
BARE_METAL_LDFLAGS = ["-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments"]
CFLAGS = [
    *BARE_METAL_CFLAGS,
    "-mno-relax",  # code layout exactly as written (page-crossing tests)
    "-g",
    f"-I{RT_DIR}",
    f"-I{GEN_DIR}",
    # e.g. -DVERBOSE to make programs print every case of their sweeps
    *os.environ.get("GUEST_EXTRA_CFLAGS", "").split(),
]
LDFLAGS = [*BARE_METAL_LDFLAGS, f"-T{LINKER_SCRIPT}"]
# The programs may be built by two processes at once (two pytest runs):
# every output is written under a temporary name and renamed into place.
JOBS = 2


class BuildError(RuntimeError):
    """The cross compiler is missing or a program failed to compile."""


def compiler() -> str:
    path = shutil.which(CC)
    if path is None:
        raise BuildError(
            f"cross compiler {CC!r} not found: install gcc-riscv64-linux-gnu "
            "(Debian/Ubuntu package) or set GUEST_CROSS to another prefix"
        )
    return path


def _flags_digest() -> str:
    text = "\0".join([CC, *CFLAGS, *LDFLAGS])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _deps(depfile: Path) -> list[Path]:
    """Inputs listed in a gcc -MMD dependency file."""
    try:
        text = depfile.read_text()
    except FileNotFoundError:
        return []
    body = text.replace("\\\n", " ").split(":", 1)[-1]
    # Only the first rule is the target's; later lines are phony headers.
    first = body.split("\n", 1)[0]
    return [Path(p) for p in first.split()]


def _up_to_date(target: Path, inputs: list[Path]) -> bool:
    if not target.exists():
        return False
    t = target.stat().st_mtime_ns
    for p in inputs:
        try:
            if p.stat().st_mtime_ns > t:
                return False
        except FileNotFoundError:
            return False
    return True


def _tmp(path: Path) -> Path:
    """A temporary name next to path, private to this process and thread."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"command failed: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


def _stamp_inputs(out_dir: Path) -> Path:
    """A file whose mtime changes whenever the flags change."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = out_dir / ".flags"
    digest = _flags_digest()
    if not stamp.exists() or stamp.read_text() != digest:
        tmp = _tmp(stamp)
        tmp.write_text(digest)
        tmp.replace(stamp)
    return stamp


def _compile(source: Path, obj: Path, stamp: Path, verbose: bool) -> bool:
    dep = obj.with_suffix(".d")
    if _up_to_date(obj, [source, stamp, *_deps(dep)]):
        return False
    tmp = _tmp(obj)
    tmp_dep = _tmp(dep)
    cmd = [compiler(), *CFLAGS, "-MMD", "-MF", str(tmp_dep), "-c", str(source), "-o", str(tmp)]
    if verbose:
        print(" ".join(cmd), file=sys.stderr)
    _run(cmd)
    # (The dep file names the temporary object as its target; only its
    # inputs are ever read.)
    tmp_dep.replace(dep)
    tmp.replace(obj)
    return True


def _generate_headers() -> None:
    """Regenerate headers whose generator changed (content-compared, so an
    unchanged header keeps its mtime and nothing recompiles)."""
    GEN_DIR.mkdir(parents=True, exist_ok=True)
    for name, script in GENERATED.items():
        out = GEN_DIR / name
        if _up_to_date(out, [script]):
            continue
        spec = importlib.util.spec_from_file_location(f"guest_gen_{script.stem}", script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        text = module.generate()
        if out.exists() and out.read_text() == text:
            continue
        tmp = _tmp(out)
        tmp.write_text(text)
        tmp.replace(out)


def _runtime_objects(verbose: bool) -> list[Path]:
    _generate_headers()
    out = BUILD_DIR / "rt"
    stamp = _stamp_inputs(out)
    objs = []
    for src in RT_SOURCES:
        obj = out / (src.stem + ".o")
        _compile(src, obj, stamp, verbose)
        objs.append(obj)
    return objs


def build_source(source: Path, out_dir: Path = BUILD_DIR, verbose: bool = False) -> Path:
    """Compile and link one program (any path) into out_dir/<stem>.elf."""
    source = Path(source).resolve()
    rt_objs = _runtime_objects(verbose)
    stamp = _stamp_inputs(out_dir)
    obj = out_dir / (source.stem + ".o")
    elf = out_dir / (source.stem + ".elf")
    compiled = _compile(source, obj, stamp, verbose)
    if not compiled and _up_to_date(elf, [obj, *rt_objs, LINKER_SCRIPT, stamp]):
        return elf
    tmp = _tmp(elf)
    cmd = [compiler(), *CFLAGS, *LDFLAGS, str(obj), *map(str, rt_objs), "-o", str(tmp)]
    if verbose:
        print(" ".join(cmd), file=sys.stderr)
    _run(cmd)
    # A disassembly next to the ELF: the first thing to read when outputs differ.
    if shutil.which(OBJDUMP):
        listing = subprocess.run([OBJDUMP, "-d", "-S", str(tmp)], capture_output=True, text=True)
        elf.with_suffix(".lst").write_text(listing.stdout)
    tmp.replace(elf)
    return elf


def cross_compile(sources: Sequence[Path], out: Path, linker_script: Path, flags: Sequence[str] = ()) -> Path:
    """Compile and link `sources` into the ELF `out` in one compiler call,
    with the base flags and `flags` (-D, -I, ...); no runtime, always rebuilt."""
    cmd = [
        compiler(),
        *BARE_METAL_CFLAGS,
        *flags,
        *BARE_METAL_LDFLAGS,
        f"-T{linker_script}",
        *map(str, sources),
        "-o",
        str(out),
    ]
    _run(cmd)
    return out


def program_sources() -> dict[str, Path]:
    """name -> source of every program in src/ (not the runtime)."""
    found: dict[str, Path] = {}
    for path in sorted(SRC_DIR.iterdir()):
        if path.is_file() and path.suffix in (".c", ".S"):
            if path.stem in found:
                raise BuildError(f"two programs named {path.stem!r} in {SRC_DIR}")
            found[path.stem] = path
    return found


def build_all(names: list[str] | None = None, verbose: bool = False) -> dict[str, Path]:
    """Build the named programs (default: all); returns name -> ELF path."""
    compiler()
    sources = program_sources()
    if names:
        unknown = sorted(set(names) - set(sources))
        if unknown:
            raise BuildError(f"no such program: {', '.join(unknown)}")
        sources = {n: sources[n] for n in names}
    _runtime_objects(verbose)  # once, before the parallel part
    with ThreadPoolExecutor(JOBS) as pool:
        futures = {n: pool.submit(build_source, s, BUILD_DIR, verbose) for n, s in sources.items()}
        return {n: f.result() for n, f in futures.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="programs to build (default: all)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print compiler commands")
    args = ap.parse_args(argv)
    try:
        for name, elf in build_all(args.names or None, args.verbose).items():
            print(f"{name}: {elf}")
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
