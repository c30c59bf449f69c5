"""An RFB (VNC) server for a `Screen` (RFC 6143, protocol version 3.8).

One `RfbSession` per client, on asyncio, over any byte stream (a TCP
connection, or a WebSocket through `pocketvm.web`). It offers security
type None (the listener is on 127.0.0.1, and the web page checks a token).

Updates: the session answers a FramebufferUpdateRequest with the screen's
damaged rectangles only (the whole screen for a non-incremental request),
and with nothing until something changes: the screen wakes the session
through `call_soon_threadsafe`, so an idle screen costs no CPU. Encodings:
Raw, and Tight (solid rectangles as one pixel, the rest zlib-compressed)
when the client asks for it, as noVNC does; DesktopSize when the guest
changes mode.

Input: key events (X keysyms) become Linux key codes on the keyboard
(`keymap`), pointer events become absolute positions and buttons on the
tablet. Keys and buttons still down when a client leaves are released.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pocketvm.backends.display import keymap
from pocketvm.backends.display.screen import Rect, Screen, Viewer

log = logging.getLogger(__name__)

PROTOCOL_VERSION = b"RFB 003.008\n"
SECURITY_NONE = 1

# client -> server messages
MSG_SET_PIXEL_FORMAT = 0
MSG_SET_ENCODINGS = 2
MSG_UPDATE_REQUEST = 3
MSG_KEY_EVENT = 4
MSG_POINTER_EVENT = 5
MSG_CLIENT_CUT_TEXT = 6
# server -> client
MSG_FRAMEBUFFER_UPDATE = 0

ENC_RAW = 0
ENC_TIGHT = 7
ENC_DESKTOP_SIZE = -223
ENC_CURSOR = -239
ENC_COMPRESS_LEVEL_0 = -256  # -256..-247: Tight's zlib level

MAX_CUT_TEXT = 1 << 20  # clipboard text a client may send (read and dropped)
MAX_ENCODINGS = 1024
TIGHT_BAND = 128  # rows per Tight rectangle
# A band that zlib shrinks less than this is noise (video, random pixels):
# the next TIGHT_STORED_BANDS bands go through a level-0 (stored) stream,
# which costs a copy instead of a futile search for repeats.
TIGHT_POOR_RATIO = 0.85
TIGHT_STORED_BANDS = 16
TIGHT_MAX_WIDTH = 2048  # Tight rectangles are at most this wide

# Linux input event types and codes (input-event-codes.h)
EV_SYN, EV_KEY, EV_REL, EV_ABS = 0, 1, 2, 3
SYN_REPORT = 0
ABS_X, ABS_Y = 0, 1
REL_HWHEEL, REL_WHEEL = 6, 8
BTN_LEFT, BTN_RIGHT, BTN_MIDDLE = 0x110, 0x111, 0x112
ABS_MAX = 0x7FFF  # the tablet's axis range (virtio_input.ABS_MAX)
SYN = (EV_SYN, SYN_REPORT, 0)


class ProtocolError(Exception):
    """The client broke the protocol; the connection is closed."""


class InputSink(Protocol):
    def post(self, events: Iterable[tuple[int, int, int]]) -> None: ...


class Stream(Protocol):
    """What a session reads from and writes to."""

    async def readexactly(self, n: int) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


@dataclass(frozen=True)
class PixelFormat:
    bpp: int = 32
    depth: int = 24
    big_endian: bool = False
    true_colour: bool = True
    red_max: int = 255
    green_max: int = 255
    blue_max: int = 255
    red_shift: int = 16
    green_shift: int = 8
    blue_shift: int = 0

    _S = struct.Struct(">BBBBHHHBBB3x")

    def pack(self) -> bytes:
        return self._S.pack(self.bpp, self.depth, self.big_endian, self.true_colour, self.red_max,
                            self.green_max, self.blue_max, self.red_shift, self.green_shift, self.blue_shift)

    @classmethod
    def unpack(cls, data: bytes) -> PixelFormat:
        bpp, depth, be, tc, rm, gm, bm, rs, gs, bs = cls._S.unpack(data)
        return cls(bpp, depth, bool(be), bool(tc), rm, gm, bm, rs, gs, bs)

    def check(self) -> None:
        if self.bpp not in (8, 16, 32) or not self.true_colour:
            raise ProtocolError(f"unsupported pixel format: {self.bpp} bpp, true colour {self.true_colour}")
        for mx, shift in ((self.red_max, self.red_shift), (self.green_max, self.green_shift), (self.blue_max, self.blue_shift)):
            if mx == 0 or mx > 0xFFFF or shift + mx.bit_length() > self.bpp:
                raise ProtocolError("pixel format colour fields do not fit its pixels")

    def _byte_order(self) -> tuple[int, int, int] | None:
        """Where B, G and R go in a 4-byte pixel, if each is a whole byte of it."""
        shifts = (self.blue_shift, self.green_shift, self.red_shift)
        if self.bpp != 32 or (self.red_max, self.green_max, self.blue_max) != (255, 255, 255):
            return None
        if any(sh % 8 for sh in shifts) or len(set(shifts)) != 3 or max(shifts) > 24:
            return None
        idx = [sh // 8 for sh in shifts]
        return tuple(3 - i for i in idx) if self.big_endian else tuple(idx)  # type: ignore[return-value]

    @property
    def is_tpixel(self) -> bool:
        """Tight sends 3-byte R, G, B pixels for this format (RFC 6143 7.7.6)."""
        return self.bpp == 32 and self.depth == 24 and self.red_max == self.green_max == self.blue_max == 255

    def convert(self, bgrx: np.ndarray) -> bytes:
        """(h, w, 4) B G R X pixels -> bytes in this format."""
        order = self._byte_order()
        if order is not None:  # 8-bit channels on byte boundaries: a byte shuffle
            out = np.zeros(bgrx.shape, dtype=np.uint8)
            for src, dst in enumerate(order):
                out[:, :, dst] = bgrx[:, :, src]
            return out.tobytes()
        b = bgrx[:, :, 0].astype(np.uint32)
        g = bgrx[:, :, 1].astype(np.uint32)
        r = bgrx[:, :, 2].astype(np.uint32)
        if (self.red_max, self.green_max, self.blue_max) != (255, 255, 255):
            r = r * self.red_max // 255
            g = g * self.green_max // 255
            b = b * self.blue_max // 255
        value = (r << self.red_shift) | (g << self.green_shift) | (b << self.blue_shift)
        kind = {8: "u1", 16: "u2", 32: "u4"}[self.bpp]
        return value.astype(("<" if not self.big_endian else ">") + kind).tobytes()


NATIVE = PixelFormat()  # little-endian xRGB: the screen's own bytes


def tight_length(n: int) -> bytes:
    """Tight's compact length: 7 bits per byte, at most 3 bytes."""
    out = bytearray([n & 0x7F])
    if n > 0x7F:
        out[0] |= 0x80
        out.append((n >> 7) & 0x7F)
        if n > 0x3FFF:
            out[1] |= 0x80
            out.append((n >> 14) & 0xFF)
    return bytes(out)


class RfbSession:
    def __init__(self, stream: Stream, screen: Screen, keyboard: InputSink | None, tablet: InputSink | None,
                 name: str = "pocketvm"):
        self.stream = stream
        self.screen = screen
        self.keyboard = keyboard
        self.tablet = tablet
        self.name = name.encode()
        self.format = NATIVE
        self.encodings: list[int] = [ENC_RAW]
        self.compress_level = 1
        self.bytes_sent = 0
        self.updates_sent = 0
        self._wake = asyncio.Event()
        self._request: tuple[bool, Rect] | None = None  # (incremental, area) of the pending request
        self._zlib: dict[int, zlib._Compress] = {}  # Tight's streams: 0 compresses, 1 only stores
        self._stored_bands = 0  # bands left to send through stream 1
        self._keys_down: set[int] = set()
        self._shift_keysyms_down: set[int] = set()
        self._buttons = 0
        self._viewer: Viewer | None = None
        self.client_size = (screen.width, screen.height)  # as the client was last told

    # --- the session ---------------------------------------------------------------

    async def run(self) -> None:
        """Serve the client until it leaves; ProtocolError/IncompleteReadError end it."""
        loop = asyncio.get_running_loop()
        await self._handshake()
        self._viewer = self.screen.attach(lambda: loop.call_soon_threadsafe(self._wake.set))
        sender = asyncio.create_task(self._send_updates())
        reader = asyncio.create_task(self._read_messages())
        try:
            done, _ = await asyncio.wait({reader, sender}, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()  # re-raise what ended it
        finally:
            sender.cancel()
            reader.cancel()
            self.screen.detach(self._viewer)
            self._release_all()

    async def _handshake(self) -> None:
        s = self.stream
        s.write(PROTOCOL_VERSION)
        await s.drain()
        version = await s.readexactly(12)
        if not version.startswith(b"RFB 003.") or version[-1:] != b"\n":
            raise ProtocolError(f"not an RFB client: {version!r}")
        minor = int(version[8:11]) if version[8:11].isdigit() else 0
        if minor >= 7:
            s.write(bytes([1, SECURITY_NONE]))
            await s.drain()
            chosen = (await s.readexactly(1))[0]
            if chosen != SECURITY_NONE:
                raise ProtocolError(f"client chose security type {chosen}")
            if minor >= 8:
                s.write(struct.pack(">I", 0))  # SecurityResult: OK
        else:  # 3.3: the server decides
            s.write(struct.pack(">I", SECURITY_NONE))
        await s.drain()
        await s.readexactly(1)  # ClientInit: shared flag (every session is shared)
        with self.screen.lock:
            w, h = self.client_size = self.screen.width, self.screen.height
        s.write(struct.pack(">HH", w, h) + NATIVE.pack() + struct.pack(">I", len(self.name)) + self.name)
        await s.drain()

    async def _read_messages(self) -> None:
        s = self.stream
        while True:
            kind = (await s.readexactly(1))[0]
            if kind == MSG_SET_PIXEL_FORMAT:
                data = await s.readexactly(19)
                fmt = PixelFormat.unpack(data[3:])
                fmt.check()
                self.format = fmt
            elif kind == MSG_SET_ENCODINGS:
                _, count = struct.unpack(">BH", await s.readexactly(3))
                if count > MAX_ENCODINGS:
                    raise ProtocolError(f"{count} encodings")
                self._set_encodings(list(struct.unpack(f">{count}i", await s.readexactly(4 * count))))
            elif kind == MSG_UPDATE_REQUEST:
                incremental, x, y, w, h = struct.unpack(">BHHHH", await s.readexactly(9))
                self._request = (bool(incremental) and (self._request is None or self._request[0]), Rect(x, y, w, h))
                self._wake.set()
            elif kind == MSG_KEY_EVENT:
                down, _, keysym = struct.unpack(">BHI", await s.readexactly(7))
                self.key_event(bool(down), keysym)
            elif kind == MSG_POINTER_EVENT:
                mask, x, y = struct.unpack(">BHH", await s.readexactly(5))
                self.pointer_event(mask, x, y)
            elif kind == MSG_CLIENT_CUT_TEXT:
                _, length = struct.unpack(">3sI", await s.readexactly(7))
                if length > MAX_CUT_TEXT:
                    raise ProtocolError(f"{length} bytes of clipboard text")
                await s.readexactly(length)  # the guest has no clipboard to put it in
            else:
                raise ProtocolError(f"unknown client message type {kind}")

    def _set_encodings(self, encodings: list[int]) -> None:
        self.encodings = encodings
        for e in encodings:
            if ENC_COMPRESS_LEVEL_0 <= e <= ENC_COMPRESS_LEVEL_0 + 9:
                self.compress_level = e - ENC_COMPRESS_LEVEL_0

    # --- framebuffer updates ------------------------------------------------------------

    async def _send_updates(self) -> None:
        assert self._viewer is not None
        viewer = self._viewer
        while True:
            await self._wake.wait()
            self._wake.clear()
            request = self._request
            if request is None:
                continue
            incremental, _area = request
            with self.screen.lock:
                wants_cursor = ENC_CURSOR in self.encodings
                if incremental and not (viewer.damage or viewer.resized or (viewer.cursor_changed and wants_cursor)):
                    continue  # wait for the screen to change
                resized = viewer.resized
                cursor = None
                if viewer.cursor_changed and wants_cursor:
                    c = self.screen.cursor
                    cursor = (c.pixels.copy() if c.visible and c.pixels is not None else None, c.hot_x, c.hot_y)
                # The client draws the pointer where the user's mouse is, with
                # the guest's image when it takes one (the Cursor pseudo-encoding).
                viewer.resized = viewer.cursor_changed = False
                damage = viewer.take_damage()
                width, height = self.screen.width, self.screen.height
                if not incremental or resized:
                    damage = [Rect(0, 0, width, height)]
                pieces = [(r, self.screen.read(r)) for r in damage if not r.empty]
            self._request = None
            new_size = None
            if resized and ENC_DESKTOP_SIZE in self.encodings:
                new_size = self.client_size = (width, height)
            # A client that cannot resize sees the top-left part of a larger screen.
            cw, ch = self.client_size
            pieces = [(r.clip(cw, ch), px[: ch - r.y, : cw - r.x]) for r, px in pieces if not r.clip(cw, ch).empty]
            await self._send(pieces, new_size, cursor)

    async def _send(self, pieces: list[tuple[Rect, np.ndarray]], new_size: tuple[int, int] | None,
                    cursor: tuple[np.ndarray | None, int, int] | None = None) -> None:
        rects: list[bytes] = []
        if new_size is not None:
            rects.append(struct.pack(">HHHHi", 0, 0, new_size[0], new_size[1], ENC_DESKTOP_SIZE))
        if cursor is not None:
            rects.append(self._cursor_rect(*cursor))
        tight = ENC_TIGHT in self.encodings and self.encodings.index(ENC_TIGHT) < self._index(ENC_RAW)
        for r, px in pieces:
            if tight:
                rects.extend(self._tight(r, px))
            else:
                rects.append(struct.pack(">HHHHi", r.x, r.y, r.w, r.h, ENC_RAW) + self.format.convert(px))
        header = struct.pack(">BxH", MSG_FRAMEBUFFER_UPDATE, len(rects))
        data = header + b"".join(rects)
        self.stream.write(data)
        self.bytes_sent += len(data)
        self.updates_sent += 1
        await self.stream.drain()

    def _cursor_rect(self, image: np.ndarray | None, hot_x: int, hot_y: int) -> bytes:
        """The guest's pointer image: pixels, then a 1-bit mask of the opaque ones (RFC 6143 7.8.1)."""
        if image is None:  # hidden: an empty cursor
            return struct.pack(">HHHHi", 0, 0, 0, 0, ENC_CURSOR)
        h, w = image.shape[:2]
        opaque = image[:, :, 3] >= 128
        mask = np.packbits(opaque, axis=1)  # MSB first, each row padded to whole bytes
        return struct.pack(">HHHHi", hot_x, hot_y, w, h, ENC_CURSOR) + self.format.convert(image) + mask.tobytes()

    def _index(self, enc: int) -> int:
        return self.encodings.index(enc) if enc in self.encodings else len(self.encodings)

    def _tight(self, r: Rect, px: np.ndarray) -> list[bytes]:
        out = []
        for y in range(0, r.h, TIGHT_BAND):
            for x in range(0, r.w, TIGHT_MAX_WIDTH):
                band = px[y : y + TIGHT_BAND, x : x + TIGHT_MAX_WIDTH]
                h, w = band.shape[:2]
                head = struct.pack(">HHHHi", r.x + x, r.y + y, w, h, ENC_TIGHT)
                out.append(head + self._tight_body(band))
        return out

    def _tight_body(self, band: np.ndarray) -> bytes:
        flat = band.reshape(-1, 4)
        first = flat[0]
        tpixel = self.format.is_tpixel
        if (flat[:, :3] == first[:3]).all():  # one colour: "fill"
            if tpixel:
                return b"\x80" + bytes((int(first[2]), int(first[1]), int(first[0])))
            return b"\x80" + self.format.convert(band[:1, :1])
        if tpixel:
            data = band[:, :, 2::-1].tobytes()  # R, G, B
        else:
            data = self.format.convert(band)
        if len(data) < 12:
            return b"\x00" + data  # stream 0, no filter, not compressed
        stream = 1 if self._stored_bands > 0 else 0
        self._stored_bands = max(0, self._stored_bands - 1)
        z = self._deflate(stream, data)
        if stream == 0 and len(z) > TIGHT_POOR_RATIO * len(data):
            self._stored_bands = TIGHT_STORED_BANDS
        return bytes((stream << 4,)) + tight_length(len(z)) + z

    def _deflate(self, stream: int, data: bytes) -> bytes:
        z = self._zlib.get(stream)
        if z is None:
            z = self._zlib[stream] = zlib.compressobj(0 if stream else max(1, self.compress_level))
        return z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)

    # --- input ---------------------------------------------------------------------------

    def key_event(self, down: bool, keysym: int) -> None:
        if keysym in keymap.SHIFT_KEYSYMS:
            (self._shift_keysyms_down.add if down else self._shift_keysyms_down.discard)(keysym)
        pos = keymap.lookup(keysym)
        if pos is None or self.keyboard is None:
            return
        events: list[tuple[int, int, int]] = []
        if not down:
            if pos.code in self._keys_down:
                self._keys_down.discard(pos.code)
                events += [(EV_KEY, pos.code, 0), SYN]
        else:
            shift_held = bool(self._shift_keysyms_down)
            fix = pos.shift is not None and pos.shift != shift_held and keysym not in keymap.SHIFT_KEYSYMS
            held = [keymap.KEY_LEFTSHIFT if k == 0xFFE1 else keymap.KEY_RIGHTSHIFT for k in self._shift_keysyms_down]
            if fix:  # the shift state this symbol needs, for the moment of the press
                events += [(EV_KEY, c, 1 if pos.shift else 0) for c in (held if not pos.shift else [keymap.KEY_LEFTSHIFT])]
                events.append(SYN)
            events += [(EV_KEY, pos.code, 2 if pos.code in self._keys_down else 1), SYN]
            self._keys_down.add(pos.code)
            if fix:
                events += [(EV_KEY, c, 0 if pos.shift else 1) for c in (held if not pos.shift else [keymap.KEY_LEFTSHIFT])]
                events.append(SYN)
        if events:
            self.keyboard.post(events)

    def pointer_event(self, mask: int, x: int, y: int) -> None:
        if self.tablet is None:
            return
        w, h = self.client_size
        ax = min(x, w - 1) * ABS_MAX // max(1, w - 1)
        ay = min(y, h - 1) * ABS_MAX // max(1, h - 1)
        events = [(EV_ABS, ABS_X, ax), (EV_ABS, ABS_Y, ay)]
        changed = mask ^ self._buttons
        for bit, code in ((1, BTN_LEFT), (2, BTN_MIDDLE), (4, BTN_RIGHT)):
            if changed & bit:
                events.append((EV_KEY, code, 1 if mask & bit else 0))
        # Wheel "buttons" 4-7 (mask bits 8-64) click once per press.
        for bit, axis, step in ((8, REL_WHEEL, 1), (16, REL_WHEEL, -1), (32, REL_HWHEEL, -1), (64, REL_HWHEEL, 1)):
            if changed & bit and mask & bit:
                events.append((EV_REL, axis, step))
        self._buttons = mask
        self.tablet.post(events + [SYN])

    def _release_all(self) -> None:
        if self.keyboard is not None and self._keys_down:
            self.keyboard.post([(EV_KEY, c, 0) for c in sorted(self._keys_down)] + [SYN])
        self._keys_down.clear()
        if self.tablet is not None and self._buttons & 7:
            events = [(EV_KEY, code, 0) for bit, code in ((1, BTN_LEFT), (2, BTN_MIDDLE), (4, BTN_RIGHT)) if self._buttons & bit]
            self.tablet.post(events + [SYN])
        self._buttons = 0


async def serve_tcp(host: str, port: int, screen: Screen, keyboard: InputSink | None, tablet: InputSink | None,
                    name: str = "pocketvm") -> asyncio.AbstractServer:
    """Listen for VNC viewers on host:port (port 0: any free one)."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = RfbSession(_TcpStream(reader, writer), screen, keyboard, tablet, name)
        try:
            await session.run()
        except (asyncio.IncompleteReadError, ConnectionError, ProtocolError) as e:
            log.info("vnc client left: %s", e or type(e).__name__)
        except asyncio.CancelledError:
            pass  # the server is shutting down
        finally:
            writer.close()

    return await asyncio.start_server(client, host, port)


class _TcpStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def readexactly(self, n: int) -> bytes:
        return await self.reader.readexactly(n)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()
