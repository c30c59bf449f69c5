"""The screen a display device shows and a remote viewer reads.

The device side (virtio-gpu, on the VM's thread) copies flushed pixels in
with `update()` and sets the cursor; each viewer (an RFB connection, on the
display server's thread) is a `Viewer` that collects the rectangles changed
since it last looked, takes them and copies them out with `read()`. One
lock guards the pixels and every viewer's damage; each change calls the
viewers' `wake`, which only wakes their thread (an asyncio
`call_soon_threadsafe`), so an idle screen costs nothing: no one polls.

Pixels are kept as 32-bit little-endian xRGB ("B, G, R, X" bytes), the
format Linux's virtio-gpu driver uses for its framebuffer; other formats
are converted when copied in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_DAMAGE_RECTS = 32  # more than this are merged into their bounding box


def inflate_exact(data: bytes, size: int) -> bytes:
    """zlib-decompress `data`, which must hold exactly `size` bytes (never more is inflated)."""
    import zlib

    d = zlib.decompressobj()
    try:
        out = d.decompress(data, size)
    except zlib.error as e:
        raise ValueError(f"compressed pixels are damaged ({e})") from None
    if len(out) != size or d.unconsumed_tail or not d.eof:
        raise ValueError(f"compressed pixels do not hold {size} bytes")
    return out


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    w: int
    h: int

    @property
    def empty(self) -> bool:
        return self.w <= 0 or self.h <= 0

    def clip(self, width: int, height: int) -> Rect:
        x0, y0 = max(0, self.x), max(0, self.y)
        x1, y1 = min(width, self.x + self.w), min(height, self.y + self.h)
        return Rect(x0, y0, max(0, x1 - x0), max(0, y1 - y0))

    def union(self, other: Rect) -> Rect:
        x0, y0 = min(self.x, other.x), min(self.y, other.y)
        x1, y1 = max(self.x + self.w, other.x + other.w), max(self.y + self.h, other.y + other.h)
        return Rect(x0, y0, x1 - x0, y1 - y0)

    def overlaps(self, other: Rect) -> bool:
        return (
            self.x < other.x + other.w and other.x < self.x + self.w
            and self.y < other.y + other.h and other.y < self.y + self.h
        )  # fmt: skip

    def area(self) -> int:
        return max(0, self.w) * max(0, self.h)


@dataclass
class Cursor:
    """The pointer image the guest set (BGRA pixels), its hot spot and position."""

    pixels: np.ndarray | None = None  # (h, w, 4) uint8, B G R A
    hot_x: int = 0
    hot_y: int = 0
    x: int = 0
    y: int = 0
    visible: bool = False


def _changed_box(old: np.ndarray, new: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) bounding the pixels that differ between two (h, w, 4) arrays; None if none do."""
    try:  # whole pixels at once where the memory layout allows it
        diff = old.view(np.uint32)[:, :, 0] != new.view(np.uint32)[:, :, 0]
    except ValueError:
        diff = (old != new).any(axis=2)
    rows = np.flatnonzero(diff.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(diff[rows[0] : rows[-1] + 1].any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


class Viewer:
    """One reader of the screen: what changed since it last looked (guarded by the screen's lock)."""

    def __init__(self, wake: Callable[[], None]):
        self.wake = wake
        self.damage: list[Rect] = []
        self.resized = False
        self.cursor_changed = False

    def has_news(self) -> bool:
        return bool(self.damage) or self.resized or self.cursor_changed

    def add_damage(self, r: Rect) -> None:
        # Overlapping rectangles are merged, so a region redrawn many times
        # between two reads is sent once.
        merged = r
        keep = []
        for d in self.damage:
            if d.overlaps(merged):
                merged = merged.union(d)
            else:
                keep.append(d)
        keep.append(merged)
        if len(keep) > MAX_DAMAGE_RECTS:
            box = keep[0]
            for d in keep[1:]:
                box = box.union(d)
            keep = [box]
        self.damage = keep

    def take_damage(self) -> list[Rect]:
        out, self.damage = self.damage, []
        return out


class Screen:
    def __init__(self, width: int, height: int):
        if not (1 <= width <= 16384 and 1 <= height <= 16384):
            raise ValueError(f"display size {width}x{height} out of range")
        self.lock = threading.Lock()
        self.width = width
        self.height = height
        self.pixels = np.zeros((height, width, 4), dtype=np.uint8)
        self.cursor = Cursor()
        self.frames = 0  # update() calls: flushes that reached the screen
        self.viewers: list[Viewer] = []

    # --- viewers ---------------------------------------------------------------

    def attach(self, wake: Callable[[], None]) -> Viewer:
        """A new viewer; `wake()` is called (from the device's thread) after every change.
        Its first look finds the whole screen damaged."""
        viewer = Viewer(wake)
        with self.lock:
            viewer.add_damage(Rect(0, 0, self.width, self.height))
            viewer.cursor_changed = self.cursor.visible
            self.viewers.append(viewer)
        return viewer

    def detach(self, viewer: Viewer) -> None:
        with self.lock:
            if viewer in self.viewers:
                self.viewers.remove(viewer)

    def _damage(self, r: Rect, resized: bool = False, cursor: bool = False) -> list[Viewer]:
        """Record a change for every viewer (caller holds the lock); returns whom to wake."""
        for v in self.viewers:
            if not r.empty:
                v.add_damage(r)
            v.resized |= resized
            v.cursor_changed |= cursor
        return list(self.viewers)

    @staticmethod
    def _wake(viewers: list[Viewer]) -> None:
        for v in viewers:
            v.wake()

    # --- device side ------------------------------------------------------------

    def resize(self, width: int, height: int) -> None:
        """A new mode: the whole screen is new (and black until drawn)."""
        width, height = max(1, min(width, 16384)), max(1, min(height, 16384))
        with self.lock:
            if (width, height) == (self.width, self.height):
                return
            self.width, self.height = width, height
            self.pixels = np.zeros((height, width, 4), dtype=np.uint8)
            for v in self.viewers:
                v.damage = []
            woken = self._damage(Rect(0, 0, width, height), resized=True)
        self._wake(woken)

    def update(self, dst: Rect, src: np.ndarray) -> None:
        """Copy `src` ((h, w, 4) xRGB pixels) to `dst` (clipped to the screen).

        Only what really changed counts as damage: Linux's fbdev emulation
        flushes the whole screen for a blinking cursor or one character, and
        viewers should be sent that character, not the screen.
        """
        if dst.empty:
            return
        with self.lock:
            if dst.x + dst.w > self.width or dst.y + dst.h > self.height:
                dst = dst.clip(self.width, self.height)
                src = src[: dst.h, : dst.w]
                if dst.empty:
                    return
            area = self.pixels[dst.y : dst.y + dst.h, dst.x : dst.x + dst.w]
            changed = _changed_box(area, src)
            self.frames += 1
            if changed is None:
                return
            area[:] = src
            cx, cy, cw, ch = changed
            woken = self._damage(Rect(dst.x + cx, dst.y + cy, cw, ch))
        self._wake(woken)

    def blank(self) -> None:
        """No scanout: the screen shows black."""
        with self.lock:
            self.pixels[:] = 0
            woken = self._damage(Rect(0, 0, self.width, self.height))
        self._wake(woken)

    def set_cursor(self, pixels: np.ndarray | None, hot_x: int, hot_y: int) -> None:
        with self.lock:
            self.cursor.pixels = pixels
            self.cursor.hot_x, self.cursor.hot_y = hot_x, hot_y
            self.cursor.visible = pixels is not None
            woken = self._damage(Rect(0, 0, 0, 0), cursor=True)
        self._wake(woken)

    def move_cursor(self, x: int, y: int) -> None:
        # A viewer draws its own pointer where the user's mouse is; only the
        # image matters to it. The position is kept for snapshots.
        with self.lock:
            self.cursor.x, self.cursor.y = x, y

    # --- viewer side ---------------------------------------------------------------

    def read(self, r: Rect) -> np.ndarray:
        """A copy of the pixels in `r` (caller holds `lock`)."""
        return self.pixels[r.y : r.y + r.h, r.x : r.x + r.w].copy()

    # --- snapshots ------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        import zlib

        with self.lock:
            state: dict[str, Any] = {
                "width": self.width,
                "height": self.height,
                "pixels": zlib.compress(self.pixels.tobytes(), 1),
                "cursor": {"x": self.cursor.x, "y": self.cursor.y, "hot_x": self.cursor.hot_x, "hot_y": self.cursor.hot_y},
            }
            if self.cursor.pixels is not None:
                c = self.cursor.pixels
                state["cursor"]["size"] = [int(c.shape[1]), int(c.shape[0])]
                state["cursor"]["pixels"] = zlib.compress(c.tobytes(), 1)
        return state

    def load(self, state: dict[str, Any]) -> None:
        width, height = int(state["width"]), int(state["height"])
        self.resize(width, height)
        data = inflate_exact(state["pixels"], self.width * self.height * 4)
        pixels = np.frombuffer(data, dtype=np.uint8).reshape(self.height, self.width, 4)
        c = state.get("cursor", {})
        cursor = None
        if "pixels" in c:
            cw, ch = (int(v) for v in c["size"])
            if not (1 <= cw <= 256 and 1 <= ch <= 256):
                raise ValueError("cursor size out of range")
            cursor = np.frombuffer(inflate_exact(c["pixels"], cw * ch * 4), dtype=np.uint8).reshape(ch, cw, 4).copy()
        with self.lock:
            self.pixels[:] = pixels
            self.cursor = Cursor(cursor, int(c.get("hot_x", 0)), int(c.get("hot_y", 0)),
                                 int(c.get("x", 0)), int(c.get("y", 0)), cursor is not None)
            woken = self._damage(Rect(0, 0, self.width, self.height), cursor=True)
        self._wake(woken)
