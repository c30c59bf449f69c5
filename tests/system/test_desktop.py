"""The desktop image of `pocket image build debian --desktop`, in a real browser.

`pocket run --image debian-desktop --display web` restores the image's
template, which was taken with the desktop up. Headless Chromium (Debian's
package, driven by Playwright) opens the page and:

- waits until the screen shows the desktop: most of it jwm's background
  colour, the tray at the bottom (not the black framebuffer console);
- clicks into the terminal window and types a command with the browser's
  keyboard, which writes a file that the serial console then shows (keys
  and pointer reach an X application through virtio-input and libinput);
- checks on the serial console that X and the window manager run.

Without a display the image boots (its template has one) and is the plain
system: the desktop's unit is skipped.

Screenshots of the page and of the screen are saved in the test's tmp dir
(docs/desktop.png is one of them). The build takes 8-15 minutes on top of
the plain image: the test is skipped, with the command that builds it,
when the image is not there (see the README, "A desktop").
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from snaptools import Pocket

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
START = 120  # seconds until the restored template's page shows its screen (busy machine)
BOOT = 900  # a full systemd boot at emulated speed
WIDTH, HEIGHT = 1024, 768
BACKGROUND = (0x2F, 0x55, 0x77)  # jwm's desktop colour (pocketvm/guest/debian/desktop/jwmrc)
TRAY = (0x22, 0x22, 0x22)
TERMINAL_POINT = (300, 250)  # inside the terminal window (xsession: -geometry 90x28+60+50)


@pytest.fixture(scope="module")
def desktop_image():
    from pocketvm.images.debian import load
    from pocketvm.images.desktop import DEFAULT_NAME

    image = load(DEFAULT_NAME)
    if image is None or image.template is None:
        pytest.skip(f"the {DEFAULT_NAME} image is not built (8-15 minutes): "
                    f"`pocket image build debian --desktop` or `./setup.sh --desktop` builds it")
    return image


def _share_js(rgb: tuple[int, int, int], rows: str = "0, c.height") -> str:
    """The share of the canvas' pixels (in the given rows) that have colour rgb, in JavaScript."""
    r, g, b = rgb
    return f"""() => {{
        const c = document.querySelector('#screen canvas');
        if (!c || c.width < 2) return 0;
        const [y0, y1] = [{rows}];
        const d = c.getContext('2d').getImageData(0, y0, c.width, y1 - y0).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] === {r} && d[i + 1] === {g} && d[i + 2] === {b}) n++;
        return n / (d.length / 4);
    }}"""


def test_the_desktop_comes_up_and_takes_keys_and_clicks(desktop_image, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    started = time.monotonic()
    with Pocket("run", "--image", desktop_image.name, "--display", "web", "--nic", "user", "--name", "desk") as vm:
        url = vm.wait_stderr(r"pocket: display: (http://127\.0\.0\.1:\d+/[\w-]+/)").group(1)
        assert "template" in vm.err  # restored, not booted
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1800, "height": 1000})
                page.goto(url)
                # The desktop: mostly jwm's background, and its tray along the bottom.
                page.wait_for_function(f"({_share_js(BACKGROUND)})() > 0.3", timeout=START * 1000)
                shown = time.monotonic() - started
                page.wait_for_function(f"({_share_js(TRAY, f'{HEIGHT - 10}, {HEIGHT - 5}')})() > 0.3",
                                       timeout=30_000)
                canvas = page.locator("#screen canvas")
                box = canvas.bounding_box()
                assert box is not None and round(box["width"]) == WIDTH and round(box["height"]) == HEIGHT
                # X and jwm run, root's shell on the serial console answers.
                out = vm.command("pgrep -x Xorg >/dev/null && pgrep -x jwm >/dev/null && echo X-UP=$((6*7))=",
                                 "=42=", START)
                assert "X-UP=42=" in out
                # Keys and a click reach the terminal window (click-to-focus).
                x, y = TERMINAL_POINT
                page.mouse.click(box["x"] + x, box["y"] + y)
                page.keyboard.type("uname -srm; echo typed-in-xterm-$((6*7)) > /tmp/typed\n", delay=30)
                out = vm.command("for i in $(seq 120); do [ -s /tmp/typed ] && break; sleep 0.5; done; "
                                 "cat /tmp/typed; echo T=$((2+3))=", "T=5=", 120)
                assert "typed-in-xterm-42" in out
                time.sleep(2)  # the terminal shows what was typed
                # The page down to the screen's bottom edge (docs/desktop.png).
                page.screenshot(path=str(tmp_path / "desktop-page.png"),
                                clip={"x": 0, "y": 0, "width": 1800, "height": box["y"] + box["height"] + box["x"]})
                canvas.screenshot(path=str(tmp_path / "desktop.png"))
            finally:
                browser.close()
        print(f"desktop shown {shown:.1f} s after `pocket run` started")
        vm.send("poweroff\n")
        assert vm.wait(300) == 0, vm.err
    assert (tmp_path / "desktop.png").stat().st_size > 10_000


def test_without_a_display_the_desktop_image_is_the_plain_system(desktop_image):
    """No display: the template (which has one) is not used, the system boots,
    the desktop's unit is skipped, root's shell is on the serial console."""
    with Pocket("run", "--image", desktop_image.name, "--name", "desk-plain") as vm:
        vm.wait_for("root@pocket", BOOT)
        assert "template" not in vm.err  # booted, not restored
        out = vm.command("systemctl is-system-running --wait >/dev/null 2>&1; "
                         "echo D-$(systemctl is-active pocketvm-desktop)-$(ls /dev/dri 2>/dev/null | wc -l)"
                         "-$(pgrep -c Xorg)=$((7*7))=", "=49=", BOOT)
        assert "D-inactive-0-0=49=" in out
        vm.send("poweroff\n")
        assert vm.wait(300) == 0, vm.err
