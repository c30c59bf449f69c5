"""Calling translated code from the numba core.

A translated block is a native function

    int64 block(int64 *st, uint8 *ram, int64 ram_size, int64 pc,
                int64 data_translated, int64 data_tag, int64 max_insns, int64 done,
                int64 *jt, int64 off)

`jt` is the translation table (`layout`): chaining and the FPU's address
are found through it, so translated code holds no host address of its own;
`off` is the RAM offset of `pc`, so it does not depend on where its page is.
`done` counts instructions already retired by the blocks that chained into
this one (0 from the interpreter); the result is `done` plus what this block
and the blocks it chains to retired, never more than `max_insns`, with
st[PC] the next pc. A block that cannot run (too little budget left) returns
`done` unchanged; one whose code has changed in guest RAM returns -1 when
called with done = 0 (from the interpreter). The intrinsic turns the address
into a function pointer and calls it (about 2.5 ns a call here).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_I64 = ir.IntType(64)


@intrinsic
def call_block(typingctx, fn, st, ram, ram_size, pc, dx, dtag, max_insns, jt, off):
    sig = types.int64(
        types.int64, st, ram, types.int64, types.int64, types.int64, types.int64, types.int64, jt, types.int64
    )

    def codegen(context, builder, signature, args):
        fn_, st_, ram_, ram_size_, pc_, dx_, dtag_, max_, jt_, off_ = args
        st_ptr = context.make_array(signature.args[1])(context, builder, st_).data
        ram_ptr = context.make_array(signature.args[2])(context, builder, ram_).data
        jt_ptr = context.make_array(signature.args[8])(context, builder, jt_).data
        fnty = ir.FunctionType(
            _I64, [st_ptr.type, ram_ptr.type, _I64, _I64, _I64, _I64, _I64, _I64, jt_ptr.type, _I64]
        )
        ptr = builder.inttoptr(fn_, fnty.as_pointer())
        return builder.call(
            ptr, [st_ptr, ram_ptr, ram_size_, pc_, dx_, dtag_, max_, ir.Constant(_I64, 0), jt_ptr, off_]
        )

    return sig, codegen
