from __future__ import annotations

from pocketvm.devices.testdev import TestDevice


def test_finisher_requests():
    dev = TestDevice()
    assert dev.request is None
    dev.write(0, 4, 0x1234)  # unknown command: ignored
    dev.write(4, 4, 0x5555)  # wrong offset: ignored
    assert dev.request is None
    dev.write(0, 4, 0x5555)
    assert dev.request == ("poweroff", 0)
    dev.write(0, 4, (3 << 16) | 0x3333)
    assert dev.request == ("fail", 3)
    dev.write(0, 4, 0x7777)
    assert dev.request == ("reset", 0)
    assert dev.read(0, 4) == 0


def test_save_load():
    dev = TestDevice()
    dev.write(0, 4, (0xFFFF << 16) | 0x3333)
    dev2 = TestDevice()
    dev2.load(dev.save())
    assert dev2.request == ("fail", 0xFFFF)
    dev2.load(TestDevice().save())
    assert dev2.request is None
