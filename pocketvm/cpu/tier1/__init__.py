"""Tier 1: hot guest blocks translated to host machine code with llvmlite.

The interpreter (`pocketvm.cpu.core`) stays the reference. At a block entry
(the target of a jump or taken branch, or where a translated block gave
control back) it looks the physical pc up in the translation table
(`layout`); a hit calls the native code through a function pointer
(`native_call`), a miss counts towards making the block hot. Hot blocks are
queued in the same table; the host side (`engine`) reads them from guest RAM
(`decode`), generates LLVM IR (`codegen`), compiles a batch per module and
installs the entry addresses.

A translated block only ever does what the interpreter would do for the same
instructions, and gives control back *before* anything it does not handle:
a TLB miss, a device access, a misaligned access, a store into its own code
page, an instruction it does not translate. The interpreter then executes
that instruction itself, traps included, so trap values, instruction counts
and interrupt timing are exactly the interpreter's. A block checks at entry
that guest RAM still holds the instructions it was made from, which covers
self-modifying code, DMA and remapped pages without any invalidation hooks.
"""
