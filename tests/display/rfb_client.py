"""A scripted RFB client for tests and benchmarks: blocking socket, Raw and Tight decoding.

It keeps its own copy of the remote screen (`pixels`, (h, w, 3) R G B) so a
test can compare what it was sent with what the server's screen holds.
"""

from __future__ import annotations

import socket
import struct
import time
import zlib

import numpy as np

ENC_RAW, ENC_TIGHT, ENC_DESKTOP_SIZE, ENC_CURSOR = 0, 7, -223, -239
NATIVE_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
NOVNC_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 0, 8, 16)  # what noVNC asks for


class RfbClient:
    def __init__(self, host: str, port: int, timeout: float = 30.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.zlibs = [zlib.decompressobj() for _ in range(4)]
        self.bytes_received = 0
        self.rects: list[tuple[int, int, int, int, int]] = []  # of the last update: x, y, w, h, encoding
        self.fills = 0
        self.streams: set[int] = set()  # Tight zlib streams used
        self.shifts = (16, 8, 0)

    # --- bytes ---------------------------------------------------------------------
    def recv(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            self.bytes_received += len(data)
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    # --- protocol ----------------------------------------------------------------------
    def handshake(self, version: bytes = b"RFB 003.008\n") -> tuple[int, int, bytes, bytes]:
        """Returns (width, height, pixel format, name)."""
        assert self.recv(12) == b"RFB 003.008\n"
        self.send(version)
        n = self.recv(1)[0]
        types = self.recv(n)
        assert 1 in types
        self.send(b"\x01")
        assert struct.unpack(">I", self.recv(4))[0] == 0
        self.send(b"\x01")  # shared
        w, h = struct.unpack(">HH", self.recv(4))
        fmt = self.recv(16)
        name = self.recv(struct.unpack(">I", self.recv(4))[0])
        self.width, self.height = w, h
        self.pixels = np.zeros((h, w, 3), np.uint8)
        return w, h, fmt, name

    def set_encodings(self, encodings: list[int]) -> None:
        self.send(struct.pack(">BxH", 2, len(encodings)) + struct.pack(f">{len(encodings)}i", *encodings))

    def set_pixel_format(self, fmt: bytes) -> None:
        self.send(b"\x00\x00\x00\x00" + fmt)
        self.shifts = struct.unpack(">BBB", fmt[10:13])

    def request(self, incremental: bool = True) -> None:
        self.send(struct.pack(">BBHHHH", 3, int(incremental), 0, 0, self.width, self.height))

    def key(self, keysym: int, down: bool) -> None:
        self.send(struct.pack(">BBxxI", 4, int(down), keysym))

    def pointer(self, x: int, y: int, mask: int = 0) -> None:
        self.send(struct.pack(">BBHH", 5, mask, x, y))

    def read_update(self) -> list[tuple[int, int, int, int, int]]:
        """Read one FramebufferUpdate into `pixels`; returns its rectangles."""
        kind = self.recv(1)[0]
        assert kind == 0, f"unexpected server message {kind}"
        _, count = struct.unpack(">BH", self.recv(3))
        self.rects = []
        for _ in range(count):
            x, y, w, h, enc = struct.unpack(">HHHHi", self.recv(12))
            self.rects.append((x, y, w, h, enc))
            if enc == ENC_DESKTOP_SIZE:
                self.width, self.height = w, h
                self.pixels = np.zeros((h, w, 3), np.uint8)
            elif enc == ENC_CURSOR:
                pixels = self.recv(w * h * 4)
                mask = self.recv((w + 7) // 8 * h)
                self.cursor = (x, y, w, h, pixels, mask)
            elif enc == ENC_RAW:
                raw = np.frombuffer(self.recv(w * h * 4), np.uint8).reshape(h, w, 4)
                self.pixels[y : y + h, x : x + w] = self._rgb(raw)
            elif enc == ENC_TIGHT:
                self.pixels[y : y + h, x : x + w] = self._tight(w, h)
            else:
                raise AssertionError(f"unexpected encoding {enc}")
        return self.rects

    def wait_update(self, timeout: float) -> bool:
        """Whether an update starts arriving within `timeout` seconds."""
        if self.buf:
            return True
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(30.0)
        if not data:
            raise ConnectionError("server closed the connection")
        self.bytes_received += len(data)
        self.buf += data
        return True

    def _rgb(self, raw: np.ndarray) -> np.ndarray:
        rs, gs, bs = self.shifts  # 32-bit little endian: byte i holds bits 8i..8i+7
        return np.stack([raw[:, :, rs // 8], raw[:, :, gs // 8], raw[:, :, bs // 8]], axis=2)

    def _tight(self, w: int, h: int) -> np.ndarray:
        ctl = self.recv(1)[0]
        for i in range(4):
            if ctl >> i & 1:
                self.zlibs[i] = zlib.decompressobj()  # stream i reset
        if ctl >> 4 == 8:  # fill
            self.fills += 1
            return np.broadcast_to(np.frombuffer(self.recv(3), np.uint8), (h, w, 3))
        assert ctl >> 6 == 0, f"unexpected tight control {ctl:#x}"  # basic compression, no filter
        stream = ctl >> 4 & 3
        self.streams.add(stream)
        size = w * h * 3
        if size < 12:
            data = self.recv(size)
        else:
            length = 0
            for i in range(3):
                b = self.recv(1)[0]
                length |= (b & 0x7F if i < 2 else b) << (7 * i)
                if not b & 0x80 or i == 2:
                    break
            data = self.zlibs[stream].decompress(self.recv(length))
        return np.frombuffer(data, np.uint8).reshape(h, w, 3)


def wait_for(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
