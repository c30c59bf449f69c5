"""The real Debian guest's screen, keyboard and pointer in a real browser.

`pocket run --display web` boots the default guest with a virtio-gpu,
keyboard and tablet; the guest's framebuffer console (tty1) has a shell.
Headless Chromium (Debian's package, driven by Playwright; nothing is
downloaded) opens the printed URL and:

- waits until the guest's screen shows something (non-black pixels on
  noVNC's canvas);
- clicks at a known position: the guest reads the tablet's events from
  /dev/input/eventN (BusyBox `cat` into a file, shown with `od` over the
  serial console) and must report that position and the left button;
- types a command with the browser's keyboard into the tty1 shell, which
  writes a file the serial console then shows;
- types into the page's serial console (xterm.js) and sees the answer;
- fills the screen with noise and sees the page show it;
- powers the guest off and sees the page say so.

A screenshot of the page is saved as an artifact in the test's tmp dir.
The second test checks snapshots: the screen of a restored VM is the
screen that was saved, read by a scripted VNC client.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from snaptools import Pocket, pocket

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "display"))
from rfb_client import ENC_RAW, RfbClient  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
BOOT = 900
PROMPT = "pocket:~# "
ABS_MAX = 0x7FFF
WIDTH, HEIGHT = 1024, 768


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def _needs_guest(guest_image) -> None:
    if guest_image is None:
        pytest.skip("no guest image")


def _cmd(vm: Pocket, line: str, expect: str, timeout: float = 120) -> str:
    mark = vm.mark()
    vm.send(line + "\n")
    return vm.wait_for(expect, timeout, after=mark)[mark:]


def _input_events(od_output: str) -> list[tuple[int, int, int]]:
    """(type, code, value) of each 24-byte struct input_event in `od -An -v -tx1` output.

    A kernel message on the console (which the test turns down, but one
    printed before may still come) is cut out first: its timestamp's
    "[   12.345678]" held a two-digit word that was read as one more byte,
    and every event after it came out shifted (one CI run in several)."""
    od_output = re.sub(r"\[\s*\d+\.\d+\][^\r\n]*", "", od_output)
    raw = bytes(int(b, 16) for b in re.findall(r"\b[0-9a-f]{2}\b", od_output))
    out = []
    for i in range(0, len(raw) - len(raw) % 24, 24):
        t, c, v = int.from_bytes(raw[i + 16 : i + 18], "little"), int.from_bytes(raw[i + 18 : i + 20], "little"), int.from_bytes(raw[i + 20 : i + 24], "little", signed=True)
        out.append((t, c, v))
    return out


COUNT_LIT = """() => {
    const c = document.querySelector('#screen canvas');
    if (!c || c.width < 2) return 0;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] | d[i + 1] | d[i + 2]) n++;
    return n;
}"""

TERM_TEXT = """() => {
    const b = window.pocketvm.term.buffer.active;
    let s = '';
    for (let i = 0; i < b.length; i++) s += b.getLine(i).translateToString(true) + '\\n';
    return s;
}"""


def test_screen_keyboard_pointer_and_console_in_a_browser(guest_image, tmp_path):
    _needs_guest(guest_image)
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    with Pocket("run", "--display", "web", "--name", "webvm") as vm:
        url = vm.wait_stderr(r"pocket: display: (http://127\.0\.0\.1:\d+/[\w-]+/)").group(1)
        vm.wait_for(PROMPT, BOOT)
        # Record the tablet's events from now on (no kernel messages on the console meanwhile: see _input_events).
        _cmd(vm, "dmesg -n 1; for e in /sys/class/input/event*; do grep -q tablet $e/device/name && T=${e##*/}; done; "
                 "cat /dev/input/$T > /tmp/ev & echo TABLET=$T=$((1+1))=", "=2=")
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1800, "height": 1000})
                page.goto(url)
                page.wait_for_function(f"({COUNT_LIT})() > 500", timeout=120_000)  # the console's text
                canvas = page.locator("#screen canvas")
                box = canvas.bounding_box()
                assert box is not None and round(box["width"]) == WIDTH and round(box["height"]) == HEIGHT
                x, y = 200, 300
                page.mouse.click(box["x"] + x, box["y"] + y)  # also gives the screen the keyboard focus
                page.keyboard.type("echo typed-$((6*7)) > /tmp/typed\n", delay=20)
                out = _cmd(vm, "for i in $(seq 120); do [ -s /tmp/typed ] && break; sleep 0.5; done; "
                           "cat /tmp/typed; echo T=$((2+3))=", "T=5=")
                assert "typed-42" in out
                out = _cmd(vm, "od -An -v -tx1 /tmp/ev; echo E=$((3+4))=", "E=7=")
                events = _input_events(out.split("E=$((3+4))=")[-1].split("E=7=")[0])
                ax, ay = x * ABS_MAX // (WIDTH - 1), y * ABS_MAX // (HEIGHT - 1)
                presses = [i for i, e in enumerate(events) if e == (1, 0x110, 1)]
                assert presses, events
                before = events[: presses[0]]
                assert (3, 0, ax) in before and (3, 1, ay) in before, (ax, ay, events)
                assert (1, 0x110, 0) in events[presses[0] :], out
                # The serial console in the page.
                page.locator("#terminal").click()
                page.keyboard.type("echo serial-$((7*6))\n", delay=10)
                page.wait_for_function(f"({TERM_TEXT})().includes('serial-42')", timeout=60_000)
                assert "serial-42" in vm.out
                page.screenshot(path=str(tmp_path / "page.png"))
                # Noise over the whole screen (Tight sends it through its stored
                # stream): the page keeps up and shows it.
                # (One write: the guest's fbdev emulation does not flush every
                # small write by itself; its blinking cursor used to, and is off.)
                _cmd(vm, "dd if=/dev/urandom of=/tmp/noise bs=4096 count=768 2>/dev/null; "
                         "cat /tmp/noise > /dev/fb0; echo N=$((9*9))=", "N=81=")
                page.wait_for_function(f"({COUNT_LIT})() > {WIDTH * HEIGHT * 9 // 10}", timeout=60_000)
                assert page.locator("#screen-state").inner_text() == ""  # still connected
                # Power off from the page: the page says the VM has stopped.
                page.keyboard.type("poweroff\n")
                page.wait_for_function("window.pocketvm.isStopped()", timeout=120_000)
                assert "stopped" in page.locator("#state").inner_text()
                page.screenshot(path=str(tmp_path / "stopped.png"))
            finally:
                browser.close()
        assert vm.wait(60) == 0
    assert (tmp_path / "page.png").stat().st_size > 10_000


def _frame(port: int) -> np.ndarray:
    c = RfbClient("127.0.0.1", port)
    try:
        c.handshake()
        c.set_encodings([ENC_RAW])
        c.request(incremental=False)
        c.read_update()
        return c.pixels.copy()
    finally:
        c.close()


def test_restored_vm_shows_its_screen(guest_image, tmp_path):
    _needs_guest(guest_image)
    snap = tmp_path / "snap"
    with Pocket("run", "--display", "vnc", "--name", "screenvm") as vm:
        port = int(vm.wait_stderr(r"pocket: display: VNC on 127\.0\.0\.1:(\d+)").group(1))
        vm.wait_for(PROMPT, BOOT)
        # A steady screen: no blinking cursor, a marker drawn on tty1.
        _cmd(vm, "echo 0 > /sys/class/graphics/fbcon/cursor_blink; echo SCREEN-MARK-$((8*8)) > /dev/tty1; "
                 "sleep 1; echo B=$((4+4))=", "B=8=")
        before = _frame(port)
        assert (before != 0).any()
        run = pocket("snapshot", "screenvm", str(snap), "--stop")
        assert run.returncode == 0, run.stderr
        vm.wait(60)
    with Pocket("restore", str(snap), "--display", "vnc", "--name", "back") as vm:
        port = int(vm.wait_stderr(r"pocket: display: VNC on 127\.0\.0\.1:(\d+)").group(1))
        after = _frame(port)
        assert np.array_equal(before, after)
        vm.send("poweroff\n")
        assert vm.wait(60) == 0
    shutil.rmtree(snap, ignore_errors=True)
