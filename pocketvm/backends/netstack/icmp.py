"""ICMP echo (RFC 792): the only ICMP the gateway answers."""

from __future__ import annotations

from pocketvm.backends.netstack import checksum

ECHO_REPLY = 0
ECHO_REQUEST = 8


def echo_reply(message: bytes) -> bytes | None:
    """The reply to an echo request, or None if the message is not a valid one."""
    if len(message) < 8 or message[0] != ECHO_REQUEST or message[1] != 0 or not checksum.valid(message):
        return None
    reply = bytes((ECHO_REPLY, 0, 0, 0)) + message[4:]
    return reply[:2] + checksum.checksum(reply).to_bytes(2, "big") + reply[4:]
