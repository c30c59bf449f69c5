"""What a client asks for when it creates a sandbox, checked.

    {"image": "debian"}                 the image's template (`pocket run --image debian`)
    {"image": "busybox"}                a boot of the pulled default guest (`pocket run`)
    {"template": DIR} / {"snapshot": DIR}   a restore of that snapshot (`pocket restore DIR`)

plus, all optional: name, memory ("1G"), cpus, network (bool), allow
(["10.0.2.2:8000", ...]: with network, only these destinations), ttl
(seconds), env (for every command run in it), host_memory (the process's
host cap), cpu_share (host CPUs, 0.5 = half a core), display (true, or
"WxH" for a boot: a screen, keyboard and tablet on a web page, whose URL
the VM's description gives).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

MiB = 1 << 20
BUSYBOX = "busybox"  # the pulled default guest: kernel, BusyBox initramfs, no root disk
MAX_TTL = 7 * 24 * 3600
_ALLOW_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}|\*)(?::(\d{1,5}))?")
_KEYS = {"image", "template", "snapshot", "name", "memory", "cpus", "network", "allow", "ttl", "env",
         "host_memory", "cpu_share", "display"}  # fmt: skip


class SpecError(ValueError):
    """A create request that cannot be honoured as written (one line)."""


@dataclass
class VMSpec:
    source: str  # "image", "template" or "snapshot"
    target: str  # image name or snapshot directory
    name: str | None = None
    memory: int | None = None  # guest RAM in bytes; None: the source's
    cpus: int | None = None
    network: bool = False
    allow: list[str] = field(default_factory=list)  # "a.b.c.d[:port]" destinations allowed; [] = all
    ttl: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    host_memory: int | None = None
    cpu_share: float = 0.0
    display: str | None = None  # None: no display; "WxH" (a boot's size) or "" (a restore's own)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VMSpec:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _memory(value: Any, what: str) -> int:
    from pocketvm.machine import VMError, parse_memory

    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise SpecError(f"{what} must be positive")
        return value
    if not isinstance(value, str):
        raise SpecError(f"{what} must be a size such as \"1G\" or a number of bytes")
    try:
        return parse_memory(value)
    except VMError as e:
        raise SpecError(f"{what}: {e}") from None


def parse(body: Any) -> VMSpec:
    """A VMSpec from a create request's JSON body; SpecError says what is wrong."""
    if not isinstance(body, dict):
        raise SpecError("the request body must be a JSON object")
    unknown = sorted(set(body) - _KEYS)
    if unknown:
        raise SpecError(f"unknown field(s): {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})")
    sources = [k for k in ("image", "template", "snapshot") if body.get(k) is not None]
    if len(sources) > 1:
        raise SpecError("give one of image, template or snapshot")
    source = sources[0] if sources else "image"
    target = body.get(source, "debian")
    if not isinstance(target, str) or not target:
        raise SpecError(f"{source} must be a non-empty string")
    if source != "image" and not target.startswith("/"):
        raise SpecError(f"{source} must be an absolute directory path")
    spec = VMSpec(source, target)
    name = body.get("name")
    if name is not None:
        from pocketvm.control import NAME_RE

        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise SpecError("name: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        spec.name = name
    if body.get("memory") is not None:
        spec.memory = _memory(body["memory"], "memory")
    cpus = body.get("cpus")
    if cpus is not None:
        if not isinstance(cpus, int) or isinstance(cpus, bool) or not 1 <= cpus <= 8:
            raise SpecError("cpus must be an integer from 1 to 8")
        spec.cpus = cpus
    network = body.get("network", False)
    if not isinstance(network, bool):
        raise SpecError("network must be true or false")
    spec.network = network
    allow = body.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise SpecError("allow must be a list of \"A.B.C.D[:PORT]\" strings")
    for entry in allow:
        m = _ALLOW_RE.fullmatch(entry)
        if m is None or (m.group(1) != "*" and not all(int(x) < 256 for x in m.group(1).split("."))) or (
            m.group(2) is not None and not 0 < int(m.group(2)) < 65536
        ):
            raise SpecError(f"allow: bad destination {entry!r} (use A.B.C.D or A.B.C.D:PORT)")
    if allow and not network:
        raise SpecError("allow needs network: true")
    spec.allow = list(allow)
    ttl = body.get("ttl")
    if ttl is not None:
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL:
            raise SpecError(f"ttl must be a number of seconds between 0 and {MAX_TTL}")
        spec.ttl = float(ttl)
    env = body.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise SpecError("env must be an object of strings")
    if any(not k or "=" in k or "\0" in k + v for k, v in env.items()):
        raise SpecError("env: names must be non-empty without '='; no NUL bytes")
    spec.env = dict(env)
    if body.get("host_memory") is not None:
        spec.host_memory = _memory(body["host_memory"], "host_memory")
    share = body.get("cpu_share", 0)
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 64:
        raise SpecError("cpu_share must be a number of host CPUs between 0 (no limit) and 64")
    spec.cpu_share = float(share)
    display = body.get("display", False)
    if display is not False:
        if display is True:
            spec.display = "1024x768" if spec.source == "image" and spec.target == BUSYBOX else ""
        elif isinstance(display, str) and spec.source == "image" and spec.target == BUSYBOX:
            from pocketvm.web.attach import DisplayOptionError, parse_size

            try:
                spec.display = "{}x{}".format(*parse_size(display))
            except DisplayOptionError as e:
                raise SpecError(f"display: {e}") from None
        else:
            raise SpecError("display must be true or false (or \"WxH\" for a boot of busybox; a restore keeps "
                            "the snapshot's screen)")  # fmt: skip
    return spec
