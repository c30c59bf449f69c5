"""The screen model: what counts as damage, for each viewer."""

from __future__ import annotations

import numpy as np

from pocketvm.backends.display.screen import Rect, Screen, _changed_box


def test_changed_box():
    a = np.zeros((48, 64, 4), np.uint8)
    b = a.copy()
    assert _changed_box(a, b) is None
    b[5, 7, 1] = 1
    b[9, 3, 0] = 1
    assert _changed_box(a, b) == (3, 5, 5, 5)
    # A layout that cannot be read as whole pixels takes the slow path, same answer.
    c = b[:, :, ::-1][:, :, ::-1]
    assert _changed_box(a, c[:, :, :]) == (3, 5, 5, 5)
    assert _changed_box(a[:, :, ::-1], b[:, :, ::-1]) == (3, 5, 5, 5)


def test_each_viewer_has_its_own_damage():
    screen = Screen(64, 48)
    one = screen.attach(lambda: None)
    assert one.take_damage() == [Rect(0, 0, 64, 48)]  # a new viewer gets everything
    px = np.full((8, 8, 4), 9, np.uint8)
    screen.update(Rect(0, 0, 8, 8), px)
    two = screen.attach(lambda: None)
    assert one.take_damage() == [Rect(0, 0, 8, 8)]
    assert two.take_damage() == [Rect(0, 0, 64, 48)]
    screen.update(Rect(0, 0, 8, 8), px)  # the same pixels again: no damage
    assert one.take_damage() == [] and two.take_damage() == []
    for i in range(40):  # many separate changes: a bounded list, merged when it would grow too long
        screen.update(Rect(i, i, 1, 1), np.full((1, 1, 4), 200, np.uint8))
    damage = one.take_damage()
    assert len(damage) <= 32
    box = damage[0]
    for r in damage[1:]:
        box = box.union(r)
    assert box == Rect(0, 0, 40, 40) and sum(r.area() for r in damage) < 40 * 40
    screen.detach(two)
    assert screen.viewers == [one]
