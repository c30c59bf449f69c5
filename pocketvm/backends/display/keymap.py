"""X keysyms (what an RFB client sends) -> Linux evdev key codes, for a US keyboard.

A keysym names the symbol the user typed, after the client's own layout
and modifiers: '>' rather than "shift + the key right of ','". The guest
needs key positions, so each printable keysym also says whether Shift must
be down for it (`KeyPos.shift`); the RFB server adds or lifts Shift around
the key when the client's Shift state disagrees. Keys without a shifted
meaning (Return, arrows, modifiers...) have shift=None.
"""

from __future__ import annotations

from typing import NamedTuple


class KeyPos(NamedTuple):
    code: int  # Linux KEY_* code
    shift: bool | None  # Shift needed (True), must be up (False), or either (None)


KEY_LEFTSHIFT = 42
KEY_RIGHTSHIFT = 54

_LETTERS = {
    "q": 16, "w": 17, "e": 18, "r": 19, "t": 20, "y": 21, "u": 22, "i": 23, "o": 24, "p": 25,
    "a": 30, "s": 31, "d": 32, "f": 33, "g": 34, "h": 35, "j": 36, "k": 37, "l": 38,
    "z": 44, "x": 45, "c": 46, "v": 47, "b": 48, "n": 49, "m": 50,
}  # fmt: skip
# (unshifted, shifted) characters on one key
_PAIRS = {
    2: "1!", 3: "2@", 4: "3#", 5: "4$", 6: "5%", 7: "6^", 8: "7&", 9: "8*", 10: "9(", 11: "0)",
    12: "-_", 13: "=+", 26: "[{", 27: "]}", 39: ";:", 40: "'\"", 41: "`~", 43: "\\|",
    51: ",<", 52: ".>", 53: "/?",
}  # fmt: skip
_SPECIAL = {
    0xFF08: 14,  # BackSpace
    0xFF09: 15,  # Tab
    0xFE20: 15,  # ISO_Left_Tab (shift+tab)
    0xFF0D: 28,  # Return
    0xFF1B: 1,  # Escape
    0xFFFF: 111,  # Delete
    0xFF50: 102,  # Home
    0xFF51: 105,  # Left
    0xFF52: 103,  # Up
    0xFF53: 106,  # Right
    0xFF54: 108,  # Down
    0xFF55: 104,  # Page_Up
    0xFF56: 109,  # Page_Down
    0xFF57: 107,  # End
    0xFF63: 110,  # Insert
    0xFF61: 99,  # Print
    0xFF13: 119,  # Pause
    0xFF14: 70,  # Scroll_Lock
    0xFF7F: 69,  # Num_Lock
    0xFF67: 127,  # Menu
    0xFFE1: KEY_LEFTSHIFT,  # Shift_L
    0xFFE2: KEY_RIGHTSHIFT,  # Shift_R
    0xFFE3: 29,  # Control_L
    0xFFE4: 97,  # Control_R
    0xFFE5: 58,  # Caps_Lock
    0xFFE7: 125,  # Meta_L
    0xFFE8: 126,  # Meta_R
    0xFFE9: 56,  # Alt_L
    0xFFEA: 100,  # Alt_R
    0xFE03: 100,  # ISO_Level3_Shift (AltGr)
    0xFFEB: 125,  # Super_L
    0xFFEC: 126,  # Super_R
    0xFF8D: 96,  # KP_Enter
    0xFFAA: 55,  # KP_Multiply
    0xFFAB: 78,  # KP_Add
    0xFFAD: 74,  # KP_Subtract
    0xFFAE: 83,  # KP_Decimal
    0xFFAF: 98,  # KP_Divide
}
_F_KEYS = (59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 87, 88)  # F1..F12
_KEYPAD_DIGITS = (82, 79, 80, 81, 75, 76, 77, 71, 72, 73)  # KP_0..KP_9


def _build() -> dict[int, KeyPos]:
    table: dict[int, KeyPos] = {}
    for ch, code in _LETTERS.items():
        table[ord(ch)] = KeyPos(code, False)
        table[ord(ch.upper())] = KeyPos(code, True)
    for code, (plain, shifted) in _PAIRS.items():
        table[ord(plain)] = KeyPos(code, False)
        table[ord(shifted)] = KeyPos(code, True)
    table[ord(" ")] = KeyPos(57, None)
    for sym, code in _SPECIAL.items():
        table[sym] = KeyPos(code, None)
    for i, code in enumerate(_F_KEYS):
        table[0xFFBE + i] = KeyPos(code, None)
    for i, code in enumerate(_KEYPAD_DIGITS):
        table[0xFFB0 + i] = KeyPos(code, None)
    return table


KEYSYMS: dict[int, KeyPos] = _build()
SHIFT_KEYSYMS = frozenset({0xFFE1, 0xFFE2})


def lookup(keysym: int) -> KeyPos | None:
    return KEYSYMS.get(keysym)
