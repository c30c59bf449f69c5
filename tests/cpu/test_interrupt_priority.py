"""Which pending interrupt a hart takes: the privileged spec's rules, which
QEMU 7.2 does not follow (so the differential suite cannot check them)."""

from __future__ import annotations

import pytest

from pocketvm.cpu import state as S
from pocketvm.cpu.trap import pending_interrupt

MEI, MSI, MTI, SEI, SSI, STI = 11, 3, 7, 9, 1, 5


def _hart(priv: int, pending: list[int], mideleg: int = 0, mie_bit: bool = False, sie_bit: bool = False):
    st = S.new_hart_state(0)
    sh = S.new_shared_state(1)
    st[S.PRIV] = priv
    st[S.CSR + S.CSR_MIE] = 0xAAA
    st[S.CSR + S.CSR_MIDELEG] = mideleg
    st[S.CSR + S.CSR_MSTATUS] |= (S.MSTATUS_MIE if mie_bit else 0) | (S.MSTATUS_SIE if sie_bit else 0)
    for cause in pending:
        if cause == MTI:
            sh[S.SH_MTIMECMP] = 0  # mtime (0) >= mtimecmp
        elif cause == MSI:
            sh[S.SH_MSIP] = 1
        elif cause == MEI:
            st[S.EXT_IRQ] |= 1 << MEI
        else:
            st[S.CSR + S.CSR_MIP] |= 1 << cause
    return st, sh


@pytest.mark.parametrize(
    "pending, expected",
    [
        ([MEI, MSI, MTI, SEI, SSI, STI], MEI),
        ([MSI, MTI, SEI, SSI, STI], MSI),
        ([MTI, SEI, SSI, STI], MTI),
        ([SEI, SSI, STI], SEI),
        ([SSI, STI], SSI),
        ([STI], STI),
    ],
)
def test_spec_priority_order_in_user_mode(pending, expected):
    st, sh = _hart(0, pending)
    assert pending_interrupt(st, sh) == expected


def test_machine_interrupts_need_mie_only_in_machine_mode():
    st, sh = _hart(3, [MTI], mie_bit=False)
    assert pending_interrupt(st, sh) == -1
    st, sh = _hart(3, [MTI], mie_bit=True)
    assert pending_interrupt(st, sh) == MTI
    st, sh = _hart(1, [MTI], mie_bit=False)  # lower privilege: always enabled
    assert pending_interrupt(st, sh) == MTI


def test_delegated_interrupts_respect_sie_and_never_preempt_machine_mode():
    deleg = (1 << SSI) | (1 << STI) | (1 << SEI)
    st, sh = _hart(1, [STI], mideleg=deleg, sie_bit=False)
    assert pending_interrupt(st, sh) == -1
    st, sh = _hart(1, [STI], mideleg=deleg, sie_bit=True)
    assert pending_interrupt(st, sh) == STI
    st, sh = _hart(0, [STI], mideleg=deleg, sie_bit=False)  # U-mode: S interrupts always enabled
    assert pending_interrupt(st, sh) == STI
    st, sh = _hart(3, [STI], mideleg=deleg, mie_bit=True, sie_bit=True)
    assert pending_interrupt(st, sh) == -1


def test_machine_interrupt_beats_a_delegated_one_of_higher_rank():
    deleg = (1 << SEI)
    st, sh = _hart(1, [SEI, MTI], mideleg=deleg, sie_bit=True)
    assert pending_interrupt(st, sh) == MTI
