"""The FPU as a C function that translated code calls.

Translated code computes the common F/D instructions inline (`fpgen`); for
everything else -- directed rounding modes, NaN or infinite operands,
results that may be tiny or overflow, fclass, improperly boxed singles -- it
runs the interpreter's own `fp_execute` for that one instruction, which
keeps the exact semantics (rounding modes, flags, NaN boxing). This wraps it
as a C callable, `int64 fp_entry(int64 *st, int64 insn)`, returning 0 or 1
for an illegal encoding (nothing changed then).
"""

from __future__ import annotations

import numpy as np
from numba import carray, cfunc, types

from pocketvm.cpu.fpu import fp_execute
from pocketvm.cpu.state import STATE_SIZE


FP_ENTRY_SIG = types.int64(types.CPointer(types.int64), types.int64)


def fp_entry_body(stp, insn):  # type: ignore[no-untyped-def]
    """`fp_entry` before compiling (the prebuilt core, `cpu.native`, compiles it too)."""
    st = carray(stp, (STATE_SIZE,))
    return fp_execute(st, st.view(np.float64), st.view(np.float32), insn)


fp_entry = cfunc(FP_ENTRY_SIG, cache=True)(fp_entry_body)


def fp_entry_address() -> int:
    return fp_entry.address
