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
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os

log = logging.getLogger(__name__)

ENV = "POCKETVM_HARDEN"
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
    except OSError as e:  # no libseccomp on this host: no filter, said in the log
        log.warning("no seccomp filter: %s", e)
    return applied


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
