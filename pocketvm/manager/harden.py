"""Take privileges a sandbox VM process never needs away from it.

A manager's VMs run with POCKETVM_HARDEN=1 in their environment; the VM
process (`pocket run|restore`) calls `harden()` before it builds the VM:

- PR_SET_NO_NEW_PRIVS: nothing it could execute gains privileges (setuid
  binaries, file capabilities);
- a seccomp filter (made by libseccomp, called through ctypes) that
  fails with EPERM the system calls a VM monitor has no use for: running
  programs, debugging other processes, mounts and namespaces, kernel
  modules, BPF, keyrings, rebooting. Everything else stays allowed (a deny
  list: Python, numba and the devices use a wide, changing set of calls).

Both are inherited by threads and can never be undone by the process. The
monitor itself is already confined to emulating: guest code never runs
on the host CPU, and guest RAM is one bounds-checked buffer.

Started as root with `--user NAME` (`pocket run|restore`, `pocket serve`),
a VM process also becomes that user before its guest runs (drop_privileges).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "POCKETVM_HARDEN"
JIT_ENV = "POCKETVM_JIT"  # `pocketvm.cpu.tier1.layout.ENV_VAR` (not imported: this runs before numpy is needed)
PR_SET_NO_NEW_PRIVS = 38
DENIED = (
    "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root",
    "chroot", "unshare", "setns", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "swapon",
    "swapoff", "reboot", "acct", "quotactl", "open_by_handle_at", "name_to_handle_at", "fsopen", "fsmount",
    "move_mount", "open_tree",
)  # fmt: skip


def wanted() -> bool:
    return os.environ.get(ENV) == "1"


def harden() -> list[str]:
    """Apply what the host allows; the names of what was applied."""
    applied = []
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        applied.append("no_new_privs")
    else:
        log.warning("PR_SET_NO_NEW_PRIVS failed: %s", os.strerror(ctypes.get_errno()))
    try:
        _load_filter()
        applied.append("seccomp")
        # It can no longer start programs, so not tier 1's translation service
        # either: its VMs are interpreted unless $POCKETVM_JIT asks otherwise.
        os.environ.setdefault(JIT_ENV, "off")
    except OSError as e:  # no libseccomp on this host: no filter, said in the log
        log.warning("no seccomp filter: %s", e)
    return applied


def run_as(user: str) -> tuple[int, int] | None:
    """The (uid, gid) a VM process started now would drop to for `--user
    user`; None when it is that user already. VMError when the user does
    not exist, or when changing to it needs root and this is not root."""
    import pwd

    from pocketvm.machine import VMError

    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise VMError(f"--user {user}: no such user") from None
    if pw.pw_uid == os.geteuid() and pw.pw_gid == os.getegid():
        return None
    if os.geteuid() != 0:
        raise VMError(f"--user {user}: only a VM started as root can run as another user")
    return pw.pw_uid, pw.pw_gid


def drop_privileges(user: str, own: Sequence[Path] = ()) -> None:
    """Become `user` (its uid, its primary group, no supplementary groups)
    for good, as QEMU's -runas does: called by a VM process started as root
    once everything that needs root is open (RAM, disks, sockets) and before
    the guest runs, so the run loop that handles the guest's input runs
    unprivileged. The paths in `own` (the VM's own disk copies and their
    directory) are given to `user` first, so it can still delete them."""
    from pocketvm.machine import VMError

    ids = run_as(user)
    if ids is None:
        return
    uid, gid = ids
    for path in own:
        try:
            os.chown(path, uid, gid)
        except OSError as e:
            log.warning("cannot give %s to %s: %s", path, user, e)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)  # as root: real, effective and saved ids alike, in every thread (the C library sees to it)
    if os.getuid() != uid or os.geteuid() != uid:
        raise VMError(f"--user {user}: could not become that user")


SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000


def _load_filter() -> None:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        for name in DENIED:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # a call this kernel or libseccomp does not know
            rc = lib.seccomp_rule_add(ctx, SCMP_ACT_ERRNO | errno.EPERM, nr, 0)
            if rc < 0:
                raise OSError(-rc, f"seccomp_rule_add({name}): {os.strerror(-rc)}")
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)
