"""The RFB server with a scripted client: handshake, updates of changed regions only, encodings, input."""

from __future__ import annotations

import struct
import threading

import numpy as np
import pytest
from rfb_client import ENC_CURSOR, ENC_DESKTOP_SIZE, ENC_RAW, ENC_TIGHT, NOVNC_FORMAT, RfbClient, wait_for

from pocketvm.backends.display import rfb
from pocketvm.backends.display.screen import Rect, Screen
from pocketvm.web.server import DisplayServer, DisplayTargets

W, H = 64, 48
SYN = (0, 0, 0)


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[int, int, int]] = []
        self.lock = threading.Lock()

    def post(self, events) -> None:
        with self.lock:
            self.events.extend(events)

    def take(self) -> list[tuple[int, int, int]]:
        with self.lock:
            out, self.events = self.events, []
        return out


def rgb(screen: Screen) -> np.ndarray:
    return screen.pixels[:, :, 2::-1]


def paint(screen: Screen, r: Rect, seed: int) -> None:
    px = np.random.default_rng(seed).integers(0, 256, (r.h, r.w, 4), dtype=np.uint8)
    screen.update(r, px)


@pytest.fixture
def vnc():
    screen = Screen(W, H)
    paint(screen, Rect(0, 0, W, H), 1)
    kbd, tab = Sink(), Sink()
    server = DisplayServer(DisplayTargets(screen, kbd, tab, None, "test-vm"), web=False, vnc_port=0)
    server.start()
    clients: list[RfbClient] = []

    def connect() -> RfbClient:
        c = RfbClient(*server.vnc_address)
        clients.append(c)
        return c

    yield screen, kbd, tab, connect, server
    for c in clients:
        c.close()
    server.close()


def test_handshake(vnc):
    screen, _, _, connect, _ = vnc
    w, h, fmt, name = connect().handshake()
    assert (w, h, name) == (W, H, b"test-vm")
    assert fmt == rfb.NATIVE.pack()


def test_older_client_versions(vnc):
    _, _, _, connect, _ = vnc
    c = connect()
    assert c.recv(12) == b"RFB 003.008\n"
    c.send(b"RFB 003.003\n")
    assert struct.unpack(">I", c.recv(4))[0] == 1  # 3.3: the server names the security type
    c.send(b"\x01")
    assert struct.unpack(">HH", c.recv(4)) == (W, H)


def test_full_then_only_changed_regions(vnc):
    screen, _, _, connect, _ = vnc
    c = connect()
    c.handshake()
    c.set_encodings([ENC_RAW])
    c.request(incremental=False)
    assert c.read_update() == [(0, 0, W, H, ENC_RAW)]
    assert np.array_equal(c.pixels, rgb(screen))
    # Nothing changed: an incremental request is not answered...
    c.request(incremental=True)
    assert not c.wait_update(0.3)
    # ...until something changes, and then with that rectangle only.
    paint(screen, Rect(10, 5, 8, 4), 2)
    assert c.read_update() == [(10, 5, 8, 4, ENC_RAW)]
    assert np.array_equal(c.pixels, rgb(screen))
    assert c.bytes_received < 12 + W * H * 4 + 200 + 8 * 4 * 4  # the second update was small


def test_changes_between_requests_are_merged(vnc):
    screen, _, _, connect, _ = vnc
    c = connect()
    c.handshake()
    c.request(incremental=False)
    c.read_update()
    for i in range(20):  # redrawn many times before the client asks
        paint(screen, Rect(4, 4, 10, 10), 10 + i)
    paint(screen, Rect(8, 8, 10, 10), 99)
    paint(screen, Rect(50, 40, 2, 2), 98)
    c.request()
    rects = sorted(c.read_update())
    assert rects == [(4, 4, 14, 14, ENC_RAW), (50, 40, 2, 2, ENC_RAW)]
    assert np.array_equal(c.pixels, rgb(screen))


def test_tight_encoding_and_novnc_pixel_format(vnc):
    screen, _, _, connect, _ = vnc
    screen.update(Rect(0, 0, W, 16), np.full((16, W, 4), 0x40, np.uint8))  # a solid band
    c = connect()
    c.handshake()
    c.set_pixel_format(NOVNC_FORMAT)
    c.set_encodings([ENC_TIGHT, ENC_RAW, ENC_DESKTOP_SIZE, -256 + 6])
    c.request(incremental=False)
    rects = c.read_update()
    assert {r[4] for r in rects} == {ENC_TIGHT}
    assert np.array_equal(c.pixels, rgb(screen))
    paint(screen, Rect(0, 20, W, 20), 5)
    screen.update(Rect(0, 0, 8, 8), np.zeros((8, 8, 4), np.uint8))
    c.request()
    c.read_update()
    assert np.array_equal(c.pixels, rgb(screen))
    assert c.fills == 1  # the solid rectangle went as one pixel


def test_tight_noise_goes_through_the_stored_stream(vnc):
    screen, _, _, connect, _ = vnc
    c = connect()
    c.handshake()
    c.set_encodings([ENC_TIGHT, ENC_RAW])
    for i in range(3):  # random pixels: zlib cannot shrink them, later bands are only stored
        paint(screen, Rect(0, 0, W, H), 20 + i)
        c.request(incremental=i > 0)
        c.read_update()
        assert np.array_equal(c.pixels, rgb(screen))
    assert c.streams == {0, 1}


def test_raw_in_the_clients_pixel_format(vnc):
    screen, _, _, connect, _ = vnc
    c = connect()
    c.handshake()
    c.set_pixel_format(NOVNC_FORMAT)  # R in the low byte
    c.set_encodings([ENC_RAW])
    c.request(incremental=False)
    c.read_update()
    assert np.array_equal(c.pixels, rgb(screen))


def test_16_bit_pixel_format_is_converted():
    fmt = rfb.PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0)  # RGB565
    px = np.array([[[0xFF, 0x00, 0xFF, 0], [0x00, 0xFF, 0x00, 0]]], np.uint8)  # B G R X: magenta, green
    out = np.frombuffer(fmt.convert(px), "<u2")
    assert out.tolist() == [0xF81F, 0x07E0]


def test_desktop_size_after_a_mode_change(vnc):
    screen, _, _, connect, _ = vnc
    c = connect()
    c.handshake()
    c.set_encodings([ENC_RAW, ENC_DESKTOP_SIZE])
    c.request(incremental=False)
    c.read_update()
    screen.resize(80, 60)
    paint(screen, Rect(0, 0, 80, 60), 7)
    c.request()
    rects = c.read_update()
    assert rects[0] == (0, 0, 80, 60, ENC_DESKTOP_SIZE)
    assert (c.width, c.height) == (80, 60)
    assert np.array_equal(c.pixels, rgb(screen))


def test_guest_cursor_image(vnc):
    screen, _, _, connect, _ = vnc
    c = connect()
    c.handshake()
    c.set_encodings([ENC_RAW, ENC_CURSOR])
    c.request(incremental=False)
    c.read_update()
    image = np.zeros((16, 10, 4), np.uint8)
    image[:, :5] = (0x10, 0x20, 0x30, 0xFF)  # left half opaque
    screen.set_cursor(image, 2, 3)
    c.request()
    assert c.read_update() == [(2, 3, 10, 16, ENC_CURSOR)]
    x, y, w, h, pixels, mask = c.cursor
    assert pixels[:4] == bytes((0x10, 0x20, 0x30, 0)) and len(pixels) == 10 * 16 * 4
    assert mask == bytes((0b11111000, 0)) * 16
    screen.set_cursor(None, 0, 0)  # hidden
    c.request()
    assert c.read_update() == [(0, 0, 0, 0, ENC_CURSOR)]
    # A client without the pseudo-encoding is not woken for cursor changes.
    other = connect()
    other.handshake()
    other.request(incremental=False)
    other.read_update()
    other.request()
    screen.set_cursor(image, 0, 0)
    assert not other.wait_update(0.3)


def test_keys_reach_the_keyboard(vnc):
    _, kbd, _, connect, _ = vnc
    c = connect()
    c.handshake()
    c.key(ord("a"), True)
    c.key(ord("a"), False)
    wait_for(lambda: len(kbd.events) >= 4, what="key events")
    assert kbd.take() == [(1, 30, 1), SYN, (1, 30, 0), SYN]
    # '>' typed without Shift (as a browser's keysym may arrive): Shift is added around it.
    c.key(ord(">"), True)
    c.key(ord(">"), False)
    wait_for(lambda: len(kbd.events) >= 8, what="shifted key events")
    assert kbd.take() == [(1, 42, 1), SYN, (1, 52, 1), SYN, (1, 42, 0), SYN, (1, 52, 0), SYN]
    # 'A' with the client's own Shift down: nothing added.
    c.key(0xFFE1, True)
    c.key(ord("A"), True)
    c.key(ord("A"), True)  # auto-repeat
    c.key(ord("A"), False)
    c.key(0xFFE1, False)
    wait_for(lambda: len(kbd.events) >= 10, what="shift-A events")
    assert kbd.take() == [(1, 42, 1), SYN, (1, 30, 1), SYN, (1, 30, 2), SYN, (1, 30, 0), SYN, (1, 42, 0), SYN]
    c.key(0xFF0D, True)  # Return
    c.key(0x12345, True)  # no such key: ignored
    c.key(0xFF0D, False)
    wait_for(lambda: len(kbd.events) >= 4, what="return")
    assert kbd.take() == [(1, 28, 1), SYN, (1, 28, 0), SYN]


def test_pointer_reaches_the_tablet(vnc):
    _, _, tab, connect, _ = vnc
    c = connect()
    c.handshake()
    c.pointer(W - 1, 0, 1)
    c.pointer(W // 2, H // 2, 0)
    c.pointer(0, H - 1, 8)  # wheel up pressed
    c.pointer(0, H - 1, 0)
    wait_for(lambda: tab.events.count(SYN) >= 4, what="pointer events")
    assert tab.take() == [
        (3, 0, 0x7FFF), (3, 1, 0), (1, 0x110, 1), SYN,
        (3, 0, (W // 2) * 0x7FFF // (W - 1)), (3, 1, (H // 2) * 0x7FFF // (H - 1)), (1, 0x110, 0), SYN,
        (3, 0, 0), (3, 1, 0x7FFF), (2, 8, 1), SYN,
        (3, 0, 0), (3, 1, 0x7FFF), SYN,
    ]  # fmt: skip


def test_leaving_client_releases_keys_and_buttons(vnc):
    _, kbd, tab, connect, _ = vnc
    c = connect()
    c.handshake()
    c.key(0xFFE3, True)  # Control held
    c.pointer(1, 1, 4)  # right button held
    wait_for(lambda: kbd.events and tab.events, what="presses")
    kbd.take()
    tab.take()
    c.close()
    wait_for(lambda: kbd.events and tab.events, what="releases")
    assert kbd.take() == [(1, 29, 0), SYN]
    assert tab.take() == [(1, 0x111, 0), SYN]


@pytest.mark.parametrize("garbage", [
    b"HTTP/1.1 200\r\n",  # not RFB
    b"RFB 003.008\n\x02",  # a security type that was not offered
    b"RFB 003.008\n\x01\x01\x63",  # unknown message type
    b"RFB 003.008\n\x01\x01\x06\x00\x00\x00\xff\xff\xff\xff",  # 4 GiB of clipboard text
    b"RFB 003.008\n\x01\x01\x02\x00\xff\xff",  # 65535 encodings
    b"RFB 003.008\n\x01\x01\x00\x00\x00\x00" + struct.pack(">BBBBHHHBBB3x", 24, 24, 0, 1, 255, 255, 255, 16, 8, 0),
    b"RFB 003.008\n\x01\x01\x00\x00\x00\x00" + struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 0, 0, 0, 0, 0, 0, 0),
    b"RFB 003.008\n\x01\x01\x00\x00\x00\x00" + struct.pack(">BBBBHHHBBB3x", 8, 8, 0, 1, 255, 7, 3, 4, 3, 6),  # red does not fit
])  # fmt: skip
def test_hostile_clients_are_disconnected(vnc, garbage):
    screen, _, _, connect, _ = vnc
    bad = connect()
    bad.send(garbage)
    with pytest.raises((ConnectionError, AssertionError)):
        for _ in range(100):
            bad.recv(1)
    # The server still serves everyone else.
    good = connect()
    good.handshake()
    good.request(incremental=False)
    good.read_update()
    assert np.array_equal(good.pixels, rgb(screen))


def test_idle_screen_sends_nothing(vnc):
    screen, _, _, connect, server = vnc
    c = connect()
    c.handshake()
    c.request(incremental=False)
    c.read_update()
    c.request()
    assert not c.wait_update(0.5)
    viewer = screen.viewers[0]
    assert not viewer.has_news()


def test_vnc_listens_on_loopback_only(vnc):
    _, _, _, _, server = vnc
    assert server.vnc_address[0] == "127.0.0.1"


def test_32_bit_formats_are_byte_shuffles():
    px = np.array([[[0x11, 0x22, 0x33, 0x99]]], np.uint8)  # B G R X
    assert rfb.NATIVE.convert(px) == bytes((0x11, 0x22, 0x33, 0))
    big = rfb.PixelFormat(32, 24, True, True, 255, 255, 255, 16, 8, 0)
    assert big.convert(px) == bytes((0, 0x33, 0x22, 0x11))
    rgbx = rfb.PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16)  # noVNC's
    assert rgbx.convert(px) == bytes((0x33, 0x22, 0x11, 0))
    odd = rfb.PixelFormat(32, 24, False, True, 255, 255, 255, 4, 12, 20)  # not on byte boundaries
    assert np.frombuffer(odd.convert(px), "<u4")[0] == (0x33 << 4) | (0x22 << 12) | (0x11 << 20)
