"""A DHCP server for one client (RFC 2131 subset, options from RFC 2132).

The network has exactly one address to give, so there is no lease table:
every client is offered the same address, and a request for any other
address is refused with a NAK so the client starts over with DISCOVER.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pocketvm.backends.netstack.ethernet import BROADCAST

SERVER_PORT = 67
CLIENT_PORT = 68

DISCOVER = 1
OFFER = 2
REQUEST = 3
DECLINE = 4
ACK = 5
NAK = 6
RELEASE = 7
INFORM = 8

_OPT_PAD = 0
_OPT_END = 255
_OPT_NETMASK = 1
_OPT_ROUTER = 3
_OPT_DNS = 6
_OPT_BROADCAST = 28
_OPT_REQUESTED_IP = 50
_OPT_LEASE = 51
_OPT_MSG_TYPE = 53
_OPT_SERVER_ID = 54
_OPT_RENEWAL = 58
_OPT_REBINDING = 59

_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128sI")
_MAGIC = 0x63825363
_FLAG_BROADCAST = 0x8000
# RFC 1542: some clients ignore a BOOTP message shorter than this.
_MIN_MESSAGE = 300
_ZERO_IP = bytes(4)
_BROADCAST_IP = b"\xff" * 4


@dataclass(frozen=True, slots=True)
class Config:
    server_ip: bytes
    client_ip: bytes
    netmask: bytes
    router: bytes
    dns: bytes
    broadcast: bytes
    lease_seconds: int


@dataclass(frozen=True, slots=True)
class Reply:
    payload: bytes  # the UDP payload, from SERVER_PORT to CLIENT_PORT
    dst_ip: bytes
    dst_mac: bytes


def handle(config: Config, data: bytes) -> Reply | None:
    """The reply to a client's message, or None if it gets none."""
    if len(data) < _BOOTP.size:
        return None
    op, htype, hlen, _hops, xid, _secs, flags, ciaddr, _yiaddr, _siaddr, giaddr, chaddr, _sname, _file, magic = (
        _BOOTP.unpack_from(data)
    )
    if op != 1 or htype != 1 or hlen != 6 or magic != _MAGIC or giaddr != _ZERO_IP:
        return None
    options = _options(data[_BOOTP.size :])
    if options is None:
        return None
    msg_type = options.get(_OPT_MSG_TYPE, b"")
    if len(msg_type) != 1:
        return None
    mac = chaddr[:6]
    if mac[0] & 1:
        return None
    kind = msg_type[0]
    if kind == DISCOVER:
        reply_type, yiaddr = OFFER, config.client_ip
    elif kind == REQUEST:
        server_id = options.get(_OPT_SERVER_ID)
        if server_id is not None and server_id != config.server_ip:
            return None  # the client took another server's offer
        requested = options.get(_OPT_REQUESTED_IP, ciaddr)
        if requested == config.client_ip:
            reply_type, yiaddr = ACK, config.client_ip
        else:
            reply_type, yiaddr = NAK, _ZERO_IP
    elif kind == INFORM:
        reply_type, yiaddr = ACK, _ZERO_IP
    else:
        return None  # DECLINE, RELEASE: nothing to answer, nothing to free

    out = [bytes((_OPT_MSG_TYPE, 1, reply_type)), _opt(_OPT_SERVER_ID, config.server_ip)]
    if reply_type != NAK:
        if kind != INFORM:
            lease = config.lease_seconds
            out += [
                _opt(_OPT_LEASE, lease.to_bytes(4, "big")),
                _opt(_OPT_RENEWAL, (lease // 2).to_bytes(4, "big")),
                _opt(_OPT_REBINDING, (lease * 7 // 8).to_bytes(4, "big")),
            ]
        out += [
            _opt(_OPT_NETMASK, config.netmask),
            _opt(_OPT_ROUTER, config.router),
            _opt(_OPT_DNS, config.dns),
            _opt(_OPT_BROADCAST, config.broadcast),
        ]
    out.append(bytes((_OPT_END,)))
    message = _BOOTP.pack(
        2, 1, 6, 0, xid, 0, flags, ciaddr, yiaddr, config.server_ip if reply_type != NAK else _ZERO_IP,
        _ZERO_IP, chaddr, bytes(64), bytes(128), _MAGIC,
    ) + b"".join(out)
    if len(message) < _MIN_MESSAGE:
        message += bytes(_MIN_MESSAGE - len(message))

    # RFC 2131 4.1: where the server sends its reply.
    if reply_type == NAK:
        return Reply(message, _BROADCAST_IP, BROADCAST)
    if ciaddr != _ZERO_IP:
        return Reply(message, ciaddr, mac)
    if flags & _FLAG_BROADCAST:
        return Reply(message, _BROADCAST_IP, BROADCAST)
    return Reply(message, yiaddr, mac)


def _opt(code: int, value: bytes) -> bytes:
    return bytes((code, len(value))) + value


def _options(data: bytes) -> dict[int, bytes] | None:
    options: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        code = data[i]
        if code == _OPT_END:
            break
        if code == _OPT_PAD:
            i += 1
            continue
        if i + 1 >= len(data) or i + 2 + data[i + 1] > len(data):
            return None
        options.setdefault(code, data[i + 2 : i + 2 + data[i + 1]])
        i += 2 + data[i + 1]
    return options
