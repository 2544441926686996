"""The kernel interfaces the standard library lacks (Python 3.11 has no os.unshare, os.setns or mount), through
ctypes, and the system call filter every program runs under."""

from __future__ import annotations

import ctypes
import os
import struct

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 38, 36
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2


class Kernel:
    """The C library's system calls, raising OSError as the os module does."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)

    def _call(self, result: int, what: str) -> None:
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def unshare(self, flags: int) -> None:
        self._call(self.libc.unshare(flags), "unshare")

    def setns(self, fd: int, nstype: int) -> None:
        self._call(self.libc.setns(fd, nstype), "setns")

    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
    ) -> None:
        enc = lambda s: None if s is None else s.encode()
        self._call(
            self.libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}"
        )

    def umount(self, target: str) -> None:
        self._call(self.libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")

    def pivot_root(self, new_root: str, put_old: str) -> None:
        number = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}.get(os.uname().machine)
        if number is None:
            raise OSError(0, f"pivot_root: unknown system call number on {os.uname().machine}")
        self._call(self.libc.syscall(number, new_root.encode(), put_old.encode()), "pivot_root")

    def prctl(self, option: int, value: int) -> None:
        self._call(self.libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), "prctl")

    def drop_capabilities(self) -> None:
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: all empty
        self._call(self.libc.capset(header, data), "capset")

    def install_seccomp(self, program: bytes) -> None:
        """Install ``program`` (from ``seccomp_filter``) on this process and every process it starts."""
        filters = ctypes.create_string_buffer(program, len(program))

        class _Fprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        fprog = _Fprog(len(program) // 8, ctypes.cast(filters, ctypes.c_void_p))
        self._call(self.libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")

    def remove_sysv_ipc(self) -> None:
        """Remove SysV shared memory, semaphores and queues: in the server's own IPC namespace, all are the
        programs'."""
        libc = self.libc
        for kind, remove in (("shm", libc.shmctl), ("sem", libc.semctl), ("msg", libc.msgctl)):
            try:
                with open(f"/proc/sysvipc/{kind}") as f:
                    lines = f.read().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                remove(int(line.split()[1]), 0, 0)  # IPC_RMID


# Seccomp: the system calls no program needs and some would abuse. Keys (add_key, request_key, keyctl) live in the
# uid's keyring, which outlives the run and the server; ptrace lets a program made the harness's tracee stop
# itself in ways the harness must not have to read; new namespaces (unshare, clone with a CLONE_NEW* flag) give a
# program every capability inside one, and with them far more of the kernel to attack. clone3 passes its flags in
# memory a filter cannot read, so it answers ENOSYS and the C library falls back to clone.
_SYSCALLS = {  # machine: (audit arch, add_key, request_key, keyctl, ptrace, unshare, clone, clone3)
    "x86_64": (0xC000003E, 248, 249, 250, 101, 272, 56, 435),
    "aarch64": (0xC00000B7, 217, 218, 219, 117, 97, 220, 435),
}
_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_CLONE_NEWTIME = 0x80  # unshare only: in clone's flags these bits are the exit signal
_RET_ALLOW, _RET_EPERM, _RET_ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38


def seccomp_filter() -> bytes | None:
    """The BPF program (struct sock_filter[]), or None on a machine whose system call numbers are not listed."""
    machine = os.uname().machine
    if machine not in _SYSCALLS:
        return None
    arch, add_key, request_key, keyctl, ptrace, unshare, clone, clone3 = _SYSCALLS[machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, _RET_ENOSYS), (ld, 0, 0, 0)]  # other ABIs: nothing
    if machine == "x86_64":
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, _RET_ENOSYS)]  # x32 system calls
    for n in (add_key, request_key, keyctl, ptrace):
        prog += [(jeq, 0, 1, n), (ret, 0, 0, _RET_EPERM)]
    prog += [(jeq, 0, 1, clone3), (ret, 0, 0, _RET_ENOSYS)]
    for n, flags in ((unshare, _NAMESPACE_FLAGS | _CLONE_NEWTIME), (clone, _NAMESPACE_FLAGS)):
        prog += [(jeq, 0, 4, n), (ld, 0, 0, 16), (jset, 0, 1, flags), (ret, 0, 0, _RET_EPERM),
                 (ret, 0, 0, _RET_ALLOW)]  # fmt: skip
    prog.append((ret, 0, 0, _RET_ALLOW))
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)
