"""The decorator every function of the CPU core is compiled with.

numba's runtime (NRT) reference-counts arrays: a call from one compiled
function to another that is not inlined brackets each array argument with an
atomic increment and decrement of its refcount. The core passes the state and
RAM arrays to its helpers on every memory access, and those atomic
operations took about 70% of the run time. The core never allocates an array
(it only indexes arrays the host owns and keeps alive for the call), so it
is compiled without NRT (`_nrt=False`, numba's flag for code that needs no
runtime). Anything that would need NRT, such as creating an array, then
fails at compile time rather than at run time.

`error_model="numpy"`: integer division by zero does not raise (the ALU
checks divisors itself, as RISC-V defines those results), so numba emits no
zero test and no exception path after each division.

numba is imported on first use, not here: a VM that runs the prebuilt core
(`pocketvm.cpu.native`) calls `use_plain()` before the core's modules are
imported, and their functions stay plain Python for the few calls the host
makes itself (`current_mip` while idle, `flush_tlb` at a restore), so the
process never loads numba (~0.4 s of every start: its import and loading
the core from its cache).
"""

from __future__ import annotations

from types import ModuleType

_plain = False
_numba: ModuleType | None = None


def use_plain() -> None:
    """Leave the functions decorated from now on uncompiled (see the module's text)."""
    global _plain
    _plain = True


def numba() -> ModuleType:
    """numba, its cache directory set to the core's (`pocketvm.cpu.numba_cache_dir`)."""
    global _numba
    if _numba is None:
        import numba as nb

        from pocketvm.cpu import numba_cache_dir

        nb.config.CACHE_DIR = str(numba_cache_dir())
        if nb.config.DISABLE_JIT:
            # Interpreted for debugging, the core's int64 arithmetic runs on numpy
            # scalars, where RISC-V's intended two's-complement wrap-around would
            # otherwise warn on every overflowing add or multiply.
            import numpy

            numpy.seterr(over="ignore")
        _numba = nb
    return _numba


def njit(*args, **kwargs):  # type: ignore[no-untyped-def]
    """numba.njit, with the core's cache directory."""
    return numba().njit(*args, **kwargs)


def core_jit(func=None, **options):  # type: ignore[no-untyped-def]
    """`@core_jit` or `@core_jit(inline="always", ...)`: numba.njit with the core's options."""
    if _plain:
        return func if func is not None else (lambda f: f)
    decorate = numba().njit(cache=True, _nrt=False, error_model="numpy", **options)
    return decorate(func) if func is not None else decorate
