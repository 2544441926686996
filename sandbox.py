"""Run untrusted Python programs, each in a child forked from a warm server, isolated as far as the machine allows.

Why a server: starting an interpreter costs tens of milliseconds, forking one that has already imported the standard
library (and numpy) costs about one. Why so many layers: programs written by a policy under optimisation find every
way to end a run early, leak processes or fill the machine; each layer stops one class of that, and each degrades to a
weaker one when the kernel does not permit it (``Sandbox.isolation`` says what held; docs/sandbox.md explains).

Process tree, with namespaces where permitted::

    caller ── launcher ── server (pid 1 of its own pid namespace; no network; read-only file systems but /tmp)
                            └── program (pid 1 of a fresh pid namespace, own process group, unprivileged uid)
                                  └── whatever the program starts: all of it dies with the program

This module knows nothing of tests or rewards: a program is source text plus optional stdin bytes; a run gives back
how it ended, its output, what it wrote on the report channel (fd 3), and the kernel's account of its time and memory.
It must not import torch: the scorer's command line starts fast because of it.
"""

from __future__ import annotations

import atexit
import builtins
import ctypes
import fcntl
import gc
import json
import math
import os
import queue
import random
import re
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

REPORT_FD = 3  # the program writes its report here; nothing else in the program's reach is read back
# As root, each server runs its programs as a uid/gid of its own from this range (unnamed, owns nothing), held for
# the server's life: no other server on the machine, of this sandbox or another process's, uses it meanwhile.
UID_BASE, UID_COUNT = 64000, 1024  # below 65536: a container's user namespace often maps no more
# Imported once by each server, so that programs importing them pay nothing.
DEFAULT_PRELOAD = (  # noqa: SIM905
    "array bisect collections copy dataclasses datetime decimal fractions functools heapq itertools json math "
    "operator random re statistics string traceback types typing numpy numpy.random"
).split()
WALL_STRETCH = 4.0  # the default wall backstop grows by run-queue waits up to this many times its own length
RunStatus = Literal["exited", "timeout", "memory_limit", "output_limit", "infra_error"]


class SandboxError(RuntimeError):
    """The sandbox itself cannot work (e.g. no server starts); single runs report ``infra_error`` instead."""


@dataclass(frozen=True)
class Limits:
    """What one program may use. CPU time is the limit that decides ``timeout``: it does not grow on a loaded machine;
    the wall clock is a looser backstop for programs that sleep or block."""

    cpu_time: float = 10.0  # seconds, all the program's processes together
    wall_time: float | None = None  # seconds; default (2 * cpu_time + 1) times the machine's load per core
    memory: int = 1 << 30  # bytes (proportional set size), all processes together: watched, not RLIMIT_AS
    address_space: int | None = None  # per-process RLIMIT_AS backstop; default 4 * memory: numpy still starts
    output: int = 4 << 20  # bytes of stdout + stderr + report together
    file_size: int = 16 << 20  # largest file the program may write
    processes: int = 64  # processes and threads of its uid (only where the program has a uid of its own)
    open_files: int = 256

    @property
    def wall(self) -> float:
        """The wall-clock backstop. Unless set, ``2 * cpu_time + 1`` seconds, which the server extends by the time the
        program's processes waited for a CPU (the kernel's run-queue wait): a program starved on a busy machine is not
        a timeout, while a program cannot stretch its limit without CPU work being done (see ``wall_stretch``)."""
        if self.wall_time is not None:
            return self.wall_time
        return 2 * self.cpu_time + 1.0

    @property
    def wall_stretch(self) -> float:
        """How far run-queue waits may extend the default backstop, as a multiple of it (none when it was set)."""
        return 0.0 if self.wall_time is not None else WALL_STRETCH

    @property
    def backstop(self) -> int:
        return self.address_space if self.address_space is not None else 4 * self.memory


@dataclass(frozen=True)
class Program:
    source: str
    stdin: bytes = b""  # read by the program from fd 0; empty: /dev/null
    limits: Limits = field(default_factory=Limits)


@dataclass
class RunResult:
    """How a run ended. ``status`` is ``exited`` when the program ended by itself or by a signal it brought on itself;
    ``exit_code`` then is its code, or minus the signal number (None: the run's end could not be observed)."""

    status: RunStatus
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    report: str = ""
    cpu_time: float = 0.0
    wall_time: float = 0.0
    peak_memory: int = 0  # bytes, the largest resident set of one process (kernel's ru_maxrss)
    detail: str = ""


@dataclass(frozen=True)
class Isolation:
    """What held on this machine (the same for every worker)."""

    pid_namespace: bool = False  # a fresh pid namespace per program: everything it starts dies with it
    network_namespace: bool = False  # no network at all (only a loopback device, down)
    mount_namespace: bool = False  # a root of the interpreter alone, read-only; a fresh /tmp and /dev/shm per run
    ipc_namespace: bool = False  # SysV IPC objects are private to the server and removed after each run
    user_namespace: bool = (
        False  # not root: programs run as the namespace's root with every capability dropped
    )
    separate_uid: bool = False  # root: programs run as an unprivileged uid of their own per server
    memory_cgroup: bool = False  # the kernel counts and limits all the memory a program holds
    cpu_cgroup: bool = False  # the kernel counts the CPU of all a program's processes, reaped unseen or not
    seccomp: bool = False  # no keyrings, no new namespaces
    notes: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        yes = {True: "yes", False: "NO"}
        user = (
            "an unprivileged uid of their own (one per worker)"
            if self.separate_uid
            else "root of a user namespace, every capability dropped"
            if self.user_namespace
            else "the caller's own user"
        )
        return [
            f"programs run as {user}",
            f"own pid namespace (all their processes end with them): {yes[self.pid_namespace]}",
            f"own network namespace (no network): {yes[self.network_namespace]}",
            f"own root (only the interpreter, read-only; private /tmp): {yes[self.mount_namespace]}",
            f"own IPC namespace: {yes[self.ipc_namespace]}",
            f"memory counted by a cgroup of its own: {yes[self.memory_cgroup]}",
            f"CPU time counted by a cgroup of its own: {yes[self.cpu_cgroup]}",
            f"system call filter (no keyrings, no new namespaces): {yes[self.seccomp]}",
            *self.notes,
        ]


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------------------------
# Caller side: worker threads, each owning one server process.


class Sandbox:
    """Runs programs in parallel on ``workers`` servers, through a bounded queue (``submit`` blocks when it is full).

    Use as a context manager, or call ``close()``: servers are stopped, and programs still running are killed.
    """

    def __init__(
        self,
        workers: int | None = None,
        preload: Iterable[str] = (),
        namespaces: bool = True,
        tmp_size: int = 64 << 20,
        queue_size: int | None = None,
        expose: Iterable[str] = (),
        hide: Iterable[str] = (),
        cgroups: bool = True,
    ):
        """``expose``: folders the programs must be able to read (say, an interpreter they run) besides Python's own,
        read-only like the interpreter. ``hide``: files or folders programs must not read even where they lie inside
        a visible folder (the problems being scored, say); they appear empty. ``cgroups=False`` counts memory and CPU
        without cgroups, as on a machine that has none."""
        self.workers = max(1, workers or default_workers())
        options = {"namespaces": namespaces, "tmp_size": tmp_size, "cgroups": cgroups}
        self._server_args = _server_args(list(DEFAULT_PRELOAD) + list(preload), options, expose, hide)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size or 2 * self.workers)
        self._workers = [_Worker(self._queue, slot, self._server_args) for slot in range(self.workers)]
        self._closed = False
        for w in self._workers:
            w.thread.start()
        for w in self._workers:
            w.ready.wait()
        errors = [w.start_error for w in self._workers if w.start_error]
        if errors:
            self.close()
            raise SandboxError(f"the sandbox server did not start: {errors[0]}")
        self.isolation: Isolation = self._workers[0].isolation
        _open_sandboxes.add(self)

    def submit(self, program: Program) -> Future:
        if self._closed:
            raise SandboxError("the sandbox is closed")
        future: Future = Future()
        self._queue.put((program, future))
        return future

    def run(self, program: Program) -> RunResult:
        return self.submit(program).result()

    def map(self, programs: Sequence[Program]) -> list[RunResult]:
        futures = [self.submit(p) for p in programs]
        return [f.result() for f in futures]

    async def arun(self, program: Program) -> RunResult:
        """For asyncio callers: the (possibly blocking) submit runs in a thread, so the event loop never stalls."""
        import asyncio  # loaded already: an event loop runs this (a top-level import costs each server's start)

        future = await asyncio.to_thread(self.submit, program)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for _ in self._workers:
            self._queue.put(None)
        for w in self._workers:
            w.thread.join(timeout=30)
        _open_sandboxes.discard(self)

    def __enter__(self) -> Sandbox:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_open_sandboxes: weakref.WeakSet[Sandbox] = weakref.WeakSet()
atexit.register(lambda: [s.close() for s in list(_open_sandboxes)])


def _server_args(preload: list[str], options: dict, expose: Iterable[str], hide: Iterable[str]) -> list[str]:
    """The server imports this file as the module ``sandbox`` (not as ``__main__``), with this folder, and not the
    current one, first on its path: a program's files in its working folder can never shadow a module."""
    folders = sorted({os.path.abspath(p) for p in expose if os.path.isdir(p)})
    hidden = sorted({os.path.abspath(p) for p in hide if os.path.lexists(p)})
    spec = {"preload": preload, **options, "expose": folders, "hide": hidden}
    here = os.path.dirname(os.path.abspath(__file__))
    bootstrap = f"import sys; sys.path[0] = {here!r}; import sandbox; sandbox._serve(*sys.argv[1:])"
    return [sys.executable, "-s", "-c", bootstrap, json.dumps(spec)]


class _ServerDied(Exception):
    pass


class _Worker:
    """One thread and the server it owns. The thread starts the server itself: the server dies with the thread that
    forked it (PR_SET_PDEATHSIG), so it must be the long-lived worker thread, not whichever thread built the Sandbox."""

    def __init__(self, jobs: queue.Queue, slot: int, server_args: list[str]):
        self.jobs, self.slot, self.args = jobs, slot, server_args
        self.proc: subprocess.Popen | None = None
        self.cgroups: list[str] = []
        self.isolation = Isolation()
        self.start_error = ""
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"sandbox-worker-{slot}", daemon=True)

    def _loop(self) -> None:
        try:
            self._start()
        except Exception as e:  # noqa: BLE001 -- reported by the Sandbox constructor
            self.start_error = str(e)
        self.ready.set()
        if self.start_error:
            return
        while True:
            job = self.jobs.get()
            if job is None:
                break
            program, future = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self._execute(program))
                except BaseException as e:  # noqa: BLE001 -- never leave a caller waiting
                    future.set_exception(e)
        self._stop()

    def _start(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONUTF8": "1",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TMPDIR": tempfile.gettempdir(),
        }
        self.proc = subprocess.Popen(
            [*self.args, str(self.slot), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        try:
            hello = _recv(self.proc.stdout.fileno(), timeout=120)
        except _ServerDied:
            self._stop()
            raise SandboxError("the server exited during start-up") from None
        if "error" in hello:
            self._stop()
            raise SandboxError(hello["error"])
        self.isolation = Isolation(**{**hello["isolation"], "notes": tuple(hello["isolation"]["notes"])})
        self.cgroups = hello.get("cgroups", [])

    def _stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()  # the server kills any running program and exits on end of input
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc = None
        for folder in self.cgroups:  # the server's cgroups, empty once it is gone
            try:
                os.rmdir(folder)
            except OSError:
                pass
        self.cgroups = []

    def _execute(self, program: Program) -> RunResult:
        """Run once, and once more on a fresh server if the server died meanwhile: a fluke costs a retry, while a
        program that brings its server down twice gets a run without a report (scored against the program)."""
        for _attempt in range(2):
            if self.proc is None:
                try:
                    self._start()
                except SandboxError as e:
                    return RunResult("infra_error", detail=f"the sandbox server did not restart: {e}")
            try:
                return self._request(program)
            except _ServerDied:
                self._stop()
            except TimeoutError:
                self._stop()
                return RunResult("infra_error", detail="the sandbox server stopped answering")
        return RunResult("exited", None, detail="the sandbox server died while running this program, twice")

    def _request(self, program: Program) -> RunResult:
        assert self.proc is not None
        lim = program.limits
        limits = asdict(replace(lim, address_space=lim.backstop))
        request = {"source": program.source, "stdin": program.stdin.hex(), "limits": limits}
        try:
            _send(self.proc.stdin.fileno(), request)
        except OSError:
            raise _ServerDied from None
        reply = _recv(self.proc.stdout.fileno(), timeout=lim.wall * (1 + lim.wall_stretch) + 30)
        if reply.pop("retire", False):  # its clean-up failed: the next program gets a new server
            self._stop()
        return RunResult(**reply)


def _send(fd: int, message: dict) -> None:
    data = json.dumps(message).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data) :]


def _recv(fd: int, timeout: float | None = None) -> dict:
    deadline = None if timeout is None else time.monotonic() + timeout
    (size,) = struct.unpack(">I", _read_exact(fd, 4, deadline))
    return json.loads(_read_exact(fd, size, deadline))


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, remaining = [], size
    while remaining:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, remaining)
        if not chunk:
            raise _ServerDied
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


# ----------------------------------------------------------------------------------------------------------------
# Kernel interfaces the standard library lacks (Python 3.11 has no os.unshare/os.setns/mount).

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_MOVE, MS_REC = 1024, 2048, 4096, 8192, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 4, 38, 36
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
_STATVFS_TO_MS = [(os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                  (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME)]  # fmt: skip


class _Kernel:
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


def _seccomp_filter() -> bytes | None:
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


def _install_seccomp(kernel: _Kernel, program: bytes) -> None:
    filters = ctypes.create_string_buffer(program, len(program))

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Fprog(len(program) // 8, ctypes.cast(filters, ctypes.c_void_p))
    kernel._call(kernel.libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


# ----------------------------------------------------------------------------------------------------------------
# Server side. Everything below runs in the server process (``python sandbox.py --serve``) and its children.


def _serve(spec_json: str, slot: str, caller_pid: str) -> None:
    spec, slot, caller_pid = json.loads(spec_json), int(slot), int(caller_pid)  # type: ignore[assignment]
    kernel = _Kernel()
    kernel.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != caller_pid:  # the caller died before the line above took effect
        os._exit(1)
    os.setsid()  # no controlling terminal: no program can open the caller's /dev/tty
    # The protocol gets fds of its own; stray prints from preloaded modules go to /dev/null.
    requests, replies = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    try:
        flags = _enter_namespaces(kernel) if spec["namespaces"] else 0
        if flags & CLONE_NEWPID:
            _become_init_of(flags)  # the launcher waits here; from now on this is the server
            # The launcher gone, the server goes, and with it (pid 1) every program.
            kernel.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        else:
            kernel.prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans come back to us, so the sweep can find them
        server = _Server(kernel, flags, slot, spec, requests, replies)
    except Exception as e:  # noqa: BLE001 -- the caller shows it
        _send(replies, {"error": f"{type(e).__name__}: {e}"})
        os._exit(1)
    cgroups = [server.memory.cgroup, server.cpu.cgroup if server.cpu.owned else None]
    _send(replies, {"isolation": asdict(server.isolation), "cgroups": [c for c in cgroups if c]})
    server.loop()


def _enter_namespaces(kernel: _Kernel) -> int:
    """Enter the server's own namespaces: as root directly, otherwise inside a user namespace."""
    base = CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC
    uid, gid = os.geteuid(), os.getegid()
    for flags in [base, base | CLONE_NEWUSER] if uid == 0 else [base | CLONE_NEWUSER]:
        try:
            kernel.unshare(flags)
        except OSError:
            continue
        if flags & CLONE_NEWUSER:
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"0 {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"0 {gid} 1")
        return flags
    return 0


def _become_init_of(flags: int) -> None:
    """Fork the server as pid 1 of the new pid namespace; the launcher stays as its parent until it ends. When the
    launcher dies (its caller died), the kernel kills the server, and with it every process of every program."""
    pid = os.fork()
    if pid == 0:
        return
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        except InterruptedError:
            continue


class _Server:
    def __init__(self, kernel: _Kernel, flags: int, slot: int, spec: dict, requests: int, replies: int):
        self.kernel, self.requests, self.replies = kernel, requests, replies
        self.tmp_size = int(spec["tmp_size"])
        root = os.geteuid() == 0 and not flags & CLONE_NEWUSER
        self.uid = _claim_uid(slot) if root else None
        notes: list[str] = []
        self.mount_ns = bool(flags & CLONE_NEWNS)
        self.pid_ns = bool(flags & CLONE_NEWPID)
        self.ipc_ns = bool(flags & CLONE_NEWIPC)
        for name in spec["preload"]:  # before the file system shrinks to the interpreter: the toolkit's own modules
            try:
                __import__(name)
            except ImportError:
                pass  # numpy is optional, and so is anything else preloaded for speed only
        self.memory = _MemoryAccount.create(spec.get("cgroups", True))
        self.cpu = _CpuAccount.create(spec.get("cgroups", True), self.memory)
        if self.cpu.cgroup is None:
            notes.append("no cgroup counts CPU time: children the kernel reaps unseen (SIGCHLD ignored) are not "
                         "counted")  # fmt: skip
        if self.memory.cgroup is None:
            notes.append("no memory cgroup of its own: memory is the processes' PSS plus the shared memory behind "
                         "their descriptors and the private /tmp and /dev/shm")  # fmt: skip
        self.tmp_binds: list[tuple[str, str]] = []  # (stash, path under /tmp) bound again into every fresh /tmp
        self.tmpfs_state: dict[str, tuple] = {}
        if self.mount_ns:
            notes += _FileSystem(self).build(_python_paths() + list(spec.get("expose", ())), spec.get("hide", ()))
        self.pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY) if self.pid_ns else -1
        if not flags:
            notes.append(
                "no namespaces: programs share the network and see the file system through permissions only"
            )
        if self.uid is not None and not self.mount_ns and any(map(_closed_ancestors, _python_paths())):
            notes.append("the interpreter lies under a folder closed to other users: programs can import only what "
                         "the server preloaded")  # fmt: skip
        if not root:
            notes.append(
                "not root: no uid of its own, so the process count is bounded only by the wall clock"
            )
        self.seccomp = _seccomp_filter()
        if self.seccomp is None:
            notes.append(f"no system call filter on {os.uname().machine}: programs may use keyrings and make "
                         "namespaces")  # fmt: skip
        if not _HAS_SCHEDSTAT:
            notes.append("no /proc/<pid>/schedstat: the wall-clock backstop does not stretch for starved programs")
        if self.mount_ns:  # every program's folder is the private /tmp: its environment is set here, once
            _program_environment("/tmp")
        if "numpy" in sys.modules:  # seeded once: the server never draws from it, so every fork starts the same
            sys.modules["numpy"].random.seed(0)
        gc.freeze()  # keep preloaded objects out of the collector's sight: a collection in a child would copy them all
        self.isolation = Isolation(
            pid_namespace=self.pid_ns,
            network_namespace=bool(flags & CLONE_NEWNET),
            mount_namespace=self.mount_ns,
            ipc_namespace=self.ipc_ns,
            user_namespace=bool(flags & CLONE_NEWUSER),
            separate_uid=self.uid is not None,
            memory_cgroup=self.memory.cgroup is not None,
            cpu_cgroup=self.cpu.cgroup is not None,
            seccomp=self.seccomp is not None,
            notes=tuple(notes),
        )
        self._check_isolation()

    def fresh_tmpfs(self, folder: str) -> None:
        """A new, empty tmpfs on ``folder`` (the old one detached): nothing a program did there survives it, neither
        files, nor modes, nor a tree too deep to remove. Bounded in bytes and in inodes (hard links count too)."""
        k = self.kernel
        if folder in self.tmpfs_state:
            k.umount(folder)
        owner = f",uid={self.uid},gid={self.uid}" if self.uid is not None else ""
        k.mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV,
                f"size={self.tmp_size},nr_inodes={TMP_INODES},mode=0700{owner}")  # fmt: skip
        if folder == "/tmp":
            for stash, path in self.tmp_binds:
                _make_mount_point(path, is_dir=True)
                k.mount(stash, path, None, MS_BIND | MS_REC)
                k.mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        self.tmpfs_state[folder] = _tmpfs_state(folder)

    def _check_isolation(self) -> None:
        """Run one empty program through the real path: if isolation set-up fails here, it would fail every run."""
        result = self.run({"source": "pass", "stdin": "", "limits": asdict(Limits(cpu_time=5, wall_time=10))})
        if result.status != "exited" or result.exit_code != 0:
            raise SandboxError(f"a trivial program failed: {result}")

    def loop(self) -> None:
        while True:
            try:
                request = _recv(self.requests)
            except _ServerDied:  # the caller closed the pipe: we are done
                os._exit(0)
            self.retire = False
            try:
                result = self.run(request)
            except Exception as e:  # noqa: BLE001 -- a bug of ours, never the program's doing: say so instead of dying
                self._kill_leftovers()
                result = RunResult("infra_error", detail=f"sandbox server error: {type(e).__name__}: {e}")
            _send(self.replies, {**asdict(result), "retire": self.retire})
            if self.retire:
                os._exit(0)

    def run(self, request: dict) -> RunResult:
        """One program's run. A clean-up that fails costs the program nothing and no later program anything: the
        server retires after this reply, and its worker starts a new one."""
        limits = Limits(**request["limits"])
        stdin = bytes.fromhex(request["stdin"])
        workdir = "/tmp" if self.mount_ns else tempfile.mkdtemp(prefix="qrl-sandbox-")
        try:
            if self.uid is not None and not self.mount_ns:
                os.chown(workdir, self.uid, self.uid)
            return self._run(request["source"], stdin, limits, workdir)
        finally:
            try:
                self._clean_up(workdir)
            except Exception:  # noqa: BLE001 -- whatever the program left, a new server starts clean
                self.retire = True

    def _run(self, source: str, stdin: bytes, limits: Limits, workdir: str) -> RunResult:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        rep_r, rep_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        stdin_fd = _memfd(stdin) if stdin else os.open(os.devnull, os.O_RDONLY)
        self.memory.begin(limits.memory)
        self.cpu.begin()
        start = time.monotonic()
        if self.pid_ns:
            self.kernel.unshare(CLONE_NEWPID)  # only the next child enters it; setns below resets that
        try:
            pid = os.fork()
            if pid == 0:
                _program_child(self, source, limits, workdir, stdin_fd, out_w, err_w, rep_w, ctl_w)
        finally:
            if self.pid_ns:
                self.kernel.setns(self.pidns_fd, CLONE_NEWPID)
        for fd in (out_w, err_w, rep_w, ctl_w, stdin_fd):
            os.close(fd)
        try:
            setup_error = _read_until_eof(ctl_r, deadline=start + 30)
            if setup_error:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                self.memory.end()
                return RunResult(
                    "infra_error", detail=f"sandbox set-up failed: {setup_error.decode(errors='replace')}"
                )
            return self._supervise(pid, start, limits, {out_r: [], err_r: [], rep_r: []}, out_r, err_r, rep_r)
        finally:
            for fd in (out_r, err_r, rep_r, ctl_r):
                os.close(fd)

    def _supervise(self, pid: int, start: float, limits: Limits, buffers: dict[int, list[bytes]], out_r: int,
                   err_r: int, rep_r: int) -> RunResult:  # fmt: skip
        """Collect output and watch limits until the program's first process ends (which, in a pid namespace, ends
        all of them); then kill whatever is left and let the kernel say what the run cost."""
        pidfd = os.pidfd_open(pid)
        watch = _Watch(self, limits, start)
        open_fds, total, status, detail = set(buffers), 0, None, ""
        try:
            while status is None:
                now = time.monotonic()
                if now >= watch.deadline:
                    status, detail = "timeout", f"wall clock limit of {watch.deadline - start:.3g}s"
                    break
                wait = max(0.0, min(watch.deadline, watch.next_check) - now)
                ready = select.select([*open_fds, pidfd, self.requests], [], [], wait)[0]
                for fd in ready:
                    if fd in open_fds:
                        chunk = os.read(fd, 1 << 16)
                        if not chunk:
                            open_fds.discard(fd)
                        buffers[fd].append(chunk)
                        total += len(chunk)
                if total > limits.output:
                    status, detail = "output_limit", f"more than {limits.output} bytes of output"
                elif pidfd in ready:
                    break
                elif self.requests in ready:  # the caller is gone: take the program with us
                    self._kill(pid)
                    os._exit(0)
                elif time.monotonic() >= watch.next_check:
                    status, detail = watch.check()
            if status is not None:
                self._kill(pid)
            _, wait_status, usage = os.wait4(pid, 0)
        finally:
            os.close(pidfd)
        if not self.pid_ns:  # in a pid namespace the kernel has already killed the rest with the first process
            self._kill_leftovers()
        peak, over_memory = self.memory.end()
        total += _drain(open_fds, buffers, limits.output - total)
        # killed processes were never waited for, children reaped unseen are in no rusage: the cgroup has them all
        cpu = max(usage.ru_utime + usage.ru_stime, watch.cpu, self.cpu.used())
        code = os.waitstatus_to_exitcode(wait_status)
        if status is None and (over_memory or peak > limits.memory):
            status, detail = "memory_limit", f"more than {limits.memory >> 20} MiB of memory"
        if status is None and total > limits.output:
            status, detail = "output_limit", f"more than {limits.output} bytes of output"
        if status is None and (code == -signal.SIGXCPU or cpu > limits.cpu_time):
            status, detail = "timeout", f"CPU time limit of {limits.cpu_time:g}s"
        if status is None and code == -signal.SIGXFSZ:
            status, detail = "output_limit", f"a file larger than {limits.file_size} bytes"
        keep = (1 << 16) if status == "output_limit" else limits.output  # a cut-off run's output decides nothing
        text = lambda fd: b"".join(buffers[fd])[-keep:].decode("utf-8", errors="replace")
        return RunResult(
            status=status or "exited",
            exit_code=code,
            stdout=text(out_r),
            stderr=text(err_r),
            report=text(rep_r),
            cpu_time=round(cpu, 6),
            wall_time=round(time.monotonic() - start, 6),
            peak_memory=max(usage.ru_maxrss * 1024, peak),
            detail=detail,
        )

    def _kill(self, pid: int) -> None:
        """In a pid namespace, killing its first process kills all of it; otherwise the sweep does the rest."""
        os.kill(pid, signal.SIGKILL)

    def _kill_leftovers(self) -> None:
        """Kill and reap every process still below the server: only the current program's can be there."""
        for _ in range(1000):
            pids = _descendants(os.getpid())
            for pid in pids:
                _kill_if_child_of(pid, pids | {os.getpid()})
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                pass
            if not pids:
                return
            time.sleep(0.001)

    def _clean_up(self, workdir: str) -> None:
        if self.mount_ns:
            for folder in ("/tmp", "/dev/shm"):  # untouched (the usual case): kept; otherwise replaced, never wiped
                if _tmpfs_state(folder) != self.tmpfs_state[folder]:
                    self.fresh_tmpfs(folder)
            if self.ipc_ns:
                _remove_sysv_ipc(self.kernel.libc)
                for name in os.listdir("/dev/mqueue"):
                    os.unlink(os.path.join("/dev/mqueue", name))
        else:
            _remove_tree(workdir)
            if self.uid is not None:
                _remove_owned_by(self.uid, ("/tmp", "/var/tmp", "/dev/shm"))


TMP_INODES = 4096  # files, folders and hard links together in each private tmpfs
_SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd",
              "/etc/group", "/etc/nsswitch.conf", "/etc/hosts")  # fmt: skip
_DEVICES = ("null", "zero", "full", "random", "urandom")
_STAGE = "/sys"  # where the programs' root is built: nothing under it is a source of that root


class _FileSystem:
    """Builds the programs' root, as bubblewrap would: a tmpfs holding read-only bind mounts of the system's
    libraries and programs, the interpreter with its standard library and installed packages, and the folders the
    caller exposes; a few /etc files and device nodes; a fresh proc; private /tmp and /dev/shm. The server pivots
    into it, so nothing else of the host (the project, home folders, caches, data, host sockets) exists for any
    program. ``hide`` covers files or folders inside the visible paths (problem files, say) with empty ones."""

    def __init__(self, server: _Server):
        self.server, self.k = server, server.kernel
        self.host_mounts: list[str] = []

    def build(self, readable: Sequence[str], hide: Sequence[str]) -> list[str]:
        k, new = self.k, _STAGE
        os.umask(0o022)
        k.mount(None, "/", None, MS_REC | MS_PRIVATE)
        self.host_mounts = _mount_points()
        k.mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
        for folder in _SYSTEM_FOLDERS:
            if os.path.islink(folder):
                os.symlink(os.readlink(folder), new + folder)
        paths = [f for f in _SYSTEM_FOLDERS if os.path.isdir(f) and not os.path.islink(f)]
        for path in _outermost([*paths, *(os.path.realpath(p) for p in readable if os.path.isdir(p))]):
            if path == "/tmp" or path.startswith("/tmp/"):
                stash = f"/.qrl-keep/{len(self.server.tmp_binds)}"
                self.bind(path, new + stash)
                self.server.tmp_binds.append((stash, path))
            else:
                self.bind(path, new + path)
        for path in _ETC_FILES:
            if os.path.exists(path):
                self.bind(path, new + path)
        self._devices(new)
        for path in hide:
            self._hide(new, os.path.realpath(path))
        for folder in ("/tmp", "/proc"):
            os.mkdir(new + folder)
        if self.server.pid_ns:  # a proc of its own: pids as this namespace numbers them
            k.mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        else:
            k.mount("/proc", new + "/proc", None, MS_BIND | MS_REC)
        if self.server.ipc_ns:  # the namespace's POSIX message queues, for the clean-up to see
            os.mkdir(new + "/dev/mqueue")
            k.mount("mqueue", new + "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        os.chdir(new)
        k.pivot_root(".", ".")
        k.umount(".")  # the old root, stacked under the new one: detached, it is gone for good
        os.chdir("/")
        k.mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        self.server.fresh_tmpfs("/tmp")
        self.server.fresh_tmpfs("/dev/shm")
        return []

    def bind(self, source: str, target: str) -> None:
        """A read-only bind mount, submounts included (each made read-only too, keeping the flags a user namespace
        locks)."""
        _make_mount_point(target, os.path.isdir(source))
        self.k.mount(source, target, None, MS_BIND | MS_REC)
        inner = [m for m in self.host_mounts if m.startswith(source.rstrip("/") + "/")]
        for mount_source in [source, *inner]:
            flags = os.statvfs(mount_source).f_flag
            keep = sum(ms for st, ms in _STATVFS_TO_MS if flags & st)
            where = target + mount_source[len(source):]
            try:
                self.k.mount(None, where, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | keep)
            except OSError:
                if mount_source == source:
                    raise

    def _devices(self, new: str) -> None:
        os.makedirs(new + "/dev/shm", 0o755)
        for name in _DEVICES:
            _make_mount_point(f"{new}/dev/{name}", is_dir=False)
            self.k.mount(f"/dev/{name}", f"{new}/dev/{name}", None, MS_BIND)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2")):  # fmt: skip
            os.symlink(target, f"{new}/dev/{name}")

    def _hide(self, new: str, path: str) -> None:
        for stash, source in self.server.tmp_binds:  # under /tmp: inside its stash, bound with it into each /tmp
            if path.startswith(source + "/"):
                path = stash + path[len(source):]
        if not os.path.lexists(new + path):
            return
        if os.path.isdir(new + path) and not os.path.islink(new + path):
            self.k.mount("tmpfs", new + path, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=0555")
        else:
            self.k.mount("/dev/null", new + path, None, MS_BIND)


def _outermost(paths: Iterable[str]) -> list[str]:
    """The paths, without those inside another one of them."""
    kept: list[str] = []
    for path in sorted({os.path.abspath(p) for p in paths}):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def _make_mount_point(path: str, is_dir: bool) -> None:
    os.makedirs(path if is_dir else os.path.dirname(path), 0o755, exist_ok=True)
    if not is_dir and not os.path.lexists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def _python_paths() -> list[str]:
    """The interpreter, its standard library and its installed packages: what a program must be able to read."""
    import site
    import sysconfig

    paths = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, *sysconfig.get_paths().values(),
             *site.getsitepackages()}  # fmt: skip
    user = site.getusersitepackages()
    if site.ENABLE_USER_SITE and user in sys.path:
        paths.add(user)
    return sorted(p for p in paths if p and os.path.isdir(p))


def _tmpfs_state(folder: str) -> tuple:
    """What a program can change of a tmpfs without leaving a file in it: equal before and after, no new one."""
    st, fs = os.stat(folder), os.statvfs(folder)
    return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns, fs.f_files - fs.f_ffree,
            fs.f_blocks - fs.f_bfree, tuple(sorted(os.listxattr(folder))))  # fmt: skip


class _MemoryAccount:
    """The memory a program holds, all of it, where a memory cgroup can be made (as root, or delegated): the kernel's
    own count for a cgroup that holds the server and, while it runs, the program (forked into it for free):
    anonymous memory, page tables, the program's pages in tmpfs, memfd and shared memory, and the kernel's limit
    stops it at the limit. Otherwise (``cgroup`` None) the server counts proportional set sizes, the shared memory
    behind the processes' descriptors, and what the private /tmp and /dev/shm hold (by their own tmpfs use)."""

    def __init__(self, folder: str | None = None, version: int = 0):
        self.cg, self.version = _CgroupFiles(folder), version
        self.base, self.events = 0, (0, 0)

    @property
    def cgroup(self) -> str | None:
        return self.cg.folder

    @classmethod
    def create(cls, wanted: bool) -> _MemoryAccount:
        if not wanted:
            return cls()
        try:
            parent, version = _own_cgroup("memory")
            account = cls(_make_cgroup(parent), version)
        except (OSError, ValueError, LookupError):
            return cls()
        try:  # the kernel's limit kills a program (1000), never us: needs CAP_SYS_RESOURCE, often missing
            _write_file("/proc/self/oom_score_adj", "-1000")
        except OSError:
            pass
        return account

    def _usage(self) -> int:
        return int(self.cg.read("memory.current" if self.version == 2 else "memory.usage_in_bytes"))

    def _events(self) -> tuple[int, int]:
        """(times a charge met the limit, OOM kills): either means the program wanted more than its limit."""
        if self.version == 2:
            events = dict(line.split() for line in self.cg.read("memory.events").splitlines())
            return int(events.get("max", 0)), int(events.get("oom_kill", 0))
        control = dict(line.split() for line in self.cg.read("memory.oom_control").splitlines())
        return int(self.cg.read("memory.failcnt")), int(control.get("oom_kill", 0))

    def begin(self, limit: int) -> None:
        """Before a program is forked: what the server holds now is not the program's; the kernel stops it past
        ``limit`` more."""
        if self.cgroup is None:
            return
        self.base, self.events = self._usage(), self._events()
        if self.version == 1:
            self.cg.write("memory.max_usage_in_bytes", "0")
        self.cg.write("memory.max" if self.version == 2 else "memory.limit_in_bytes", str(self.base + limit))

    def over(self) -> bool:
        """Whether the program met its limit: the kernel holds it there, so usage alone never shows more."""
        return self.cgroup is not None and self._events() != self.events

    def end(self) -> tuple[int, bool]:
        """Once the program's processes are gone: (its peak, whether it met its limit). The limit is lifted, so that
        the server itself never meets it."""
        if self.cgroup is None:
            return 0, False
        self.cg.write("memory.max" if self.version == 2 else "memory.limit_in_bytes",
                      "max" if self.version == 2 else "-1")  # fmt: skip
        peak = int(self.cg.read("memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"))
        return max(0, peak - self.base), self.over()


def _write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _own_cgroup(controller: str) -> tuple[str, int]:
    """This process's cgroup folder for ``controller`` ("memory" or "cpuacct") and the cgroup version: a v1
    hierarchy of that controller, else the v2 folder (for memory, only where it delegates the controller to its
    children; CPU time is counted in every v2 cgroup)."""
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for _id, controllers, path in lines:
        if controller in controllers.split(","):
            for m in mounts:
                fstype = m[m.index("-") + 1]
                if fstype == "cgroup" and controller in m[m.index("-") + 3].split(",") and m[3] == "/":
                    return m[4] + path, 1
    for _id, controllers, path in lines:
        if _id == "0" and controllers == "":
            for m in mounts:
                if m[m.index("-") + 1] == "cgroup2" and m[3] == "/":
                    folder = m[4] + path
                    if controller == "memory":
                        with open(os.path.join(folder, "cgroup.subtree_control")) as f:
                            if "memory" not in f.read().split():
                                break
                    return folder, 2
    raise LookupError(f"no {controller} cgroup")


def _make_cgroup(parent: str) -> str:
    """A cgroup folder of this server's own below ``parent``, with the server in it (its programs join by being
    forked); folders of servers that ended without their caller removing them go first."""
    for stale in os.listdir(parent):
        if stale.startswith("qrl-sandbox-"):
            try:
                os.rmdir(os.path.join(parent, stale))
            except OSError:
                pass
    folder = os.path.join(parent, f"qrl-sandbox-{os.getppid()}-{os.urandom(4).hex()}")
    os.mkdir(folder)
    try:
        _write_file(os.path.join(folder, "cgroup.procs"), "0")
    except OSError:
        os.rmdir(folder)
        raise
    return folder


class _CgroupFiles:
    """A cgroup folder's files, kept open for the server's life: a read or a write is one system call."""

    def __init__(self, folder: str | None):
        self.folder = folder
        self.fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY) if folder else -1
        self.files: dict[tuple[str, int], int] = {}

    def _file(self, name: str, flags: int) -> int:
        key = (name, flags)
        if key not in self.files:
            self.files[key] = os.open(name, flags, dir_fd=self.fd)
        return self.files[key]

    def read(self, name: str) -> str:
        return os.pread(self._file(name, os.O_RDONLY), 4096, 0).decode()

    def write(self, name: str, value: str) -> None:
        os.pwrite(self._file(name, os.O_WRONLY), value.encode(), 0)


class _CpuAccount:
    """CPU time of everything a program ran, from the cgroup that holds the server and, while it runs, the program:
    children the kernel reaped unseen (``SIGCHLD`` ignored) are in no rusage and in no /proc entry, but in the
    cgroup's count. The server's own CPU over the same span is taken off. ``cgroup`` None: no such count here."""

    def __init__(self, folder: str | None = None, version: int = 0, owned: bool = False):
        self.cg, self.version, self.owned = _CgroupFiles(folder), version, owned
        self.base, self.server_base = 0, 0

    @property
    def cgroup(self) -> str | None:
        return self.cg.folder

    @classmethod
    def create(cls, wanted: bool, memory: _MemoryAccount) -> _CpuAccount:
        if not wanted:
            return cls()
        if memory.version == 2:  # one v2 cgroup holds the server: the memory folder counts CPU too
            return cls(memory.cgroup, 2, owned=False)
        try:
            parent, version = _own_cgroup("cpuacct")
            if version == 2 and memory.cgroup is None:
                return cls(_make_cgroup(parent), 2, owned=True)
            if version == 1:
                return cls(_make_cgroup(parent), 1, owned=True)
        except (OSError, ValueError, LookupError):
            pass
        return cls()

    def _usage_ns(self) -> int:
        if self.version == 2:
            line = next(x for x in self.cg.read("cpu.stat").splitlines() if x.startswith("usage_usec "))
            return int(line.split()[1]) * 1000
        return int(self.cg.read("cpuacct.usage"))

    def begin(self) -> None:
        if self.cgroup is not None:
            self.base, self.server_base = self._usage_ns(), time.process_time_ns()

    def used(self) -> float:
        """Seconds of CPU the program's processes used since ``begin``, all of them (0 without a cgroup)."""
        if self.cgroup is None:
            return 0.0
        ours = time.process_time_ns() - self.server_base
        return max(0, self._usage_ns() - self.base - ours) / 1e9


def _held_shared_memory(pids: Iterable[int], seen: set[tuple[int, int]], private_tmp: bool) -> int:
    """Bytes of memfd and shared-memory files the processes hold open (each file once): memory that is in no
    process's resident set until it is mapped."""
    total = 0
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("/memfd:") or (not private_tmp and link.startswith("/dev/shm/")):
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += st.st_blocks * 512
            except OSError:
                continue
    return total


def _program_child(server: _Server, source: str, limits: Limits, workdir: str, stdin_fd: int, out_w: int, err_w: int,
                   rep_w: int, ctl_w: int) -> None:  # fmt: skip
    """Runs in the forked child: finish isolating it, then run the program. Never returns."""
    try:
        # Its own process group: a new session would cost a scheduler autogroup (milliseconds).
        os.setpgid(0, 0)
        os.chdir(workdir)
        if server.memory.cgroup is not None:  # set while privileged: the program cannot lower it again
            _write_file("/proc/self/oom_score_adj", "1000")
        _set_limits(limits, server.uid is not None)
        os.dup2(stdin_fd, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(rep_w, REPORT_FD)
        os.closerange(REPORT_FD + 1, ctl_w)  # every pipe was opened after fd 3, so ctl_w is above it
        os.closerange(ctl_w + 1, 1 << 16)
        if not server.mount_ns:  # a folder of its own per run (a fork's first write to the environment costs)
            _program_environment(workdir)
        tempfile.tempdir = workdir
        _drop_privileges(server)
    except BaseException as e:  # noqa: BLE001 -- whatever failed, the server must hear of it
        try:
            os.write(ctl_w, f"{type(e).__name__}: {e}".encode())
        finally:
            os._exit(125)
    os.close(ctl_w)  # set-up done: the server stops waiting for a set-up error
    code = 1
    try:
        code = _exec_program(source)
    finally:
        os._exit(code)


def _claim_uid(hint: int) -> int:
    """A program uid that no other live server holds, by a lock kept (never closed) for this server's life.

    Servers of two scorers, or of each training process on a multi-GPU machine, would otherwise share a uid and with
    it the process limit, the clean-up of the uid's files and a ``kill(-1)`` by one of its programs."""
    for folder in ("/dev/shm", tempfile.gettempdir()):
        locks = os.path.join(folder, "q-rl-sandbox-uids")
        try:
            os.makedirs(locks, mode=0o700, exist_ok=True)
        except OSError:
            continue
        for n in range(UID_COUNT):
            uid = UID_BASE + (hint + n) % UID_COUNT
            fd = os.open(os.path.join(locks, str(uid)), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return uid
            except BlockingIOError:
                os.close(fd)
        raise SandboxError(f"all {UID_COUNT} program uids from {UID_BASE} are held by running sandbox servers")
    raise SandboxError("no folder for the program uids' locks (/dev/shm and the temporary folder are not writable)")


def _program_environment(workdir: str) -> None:
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=workdir, TMPDIR=workdir, LANG="C.UTF-8",
                      PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")  # fmt: skip


def _set_limits(limits: Limits, own_uid: bool) -> None:
    cpu = math.ceil(limits.cpu_time) + 1
    for which, value in (
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (limits.backstop, limits.backstop)),
        (resource.RLIMIT_FSIZE, (limits.file_size, limits.file_size)),
        (resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files)),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NICE, (0, 0)),  # no way back from idle or a higher nice: waits chosen stay uncounted
    ):
        resource.setrlimit(which, value)
    if own_uid:  # counted per uid: only meaningful when the program has a uid of its own
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))


def _drop_privileges(server: _Server) -> None:
    k = server.kernel
    if server.uid is not None:
        os.setgroups([])
        os.setresgid(server.uid, server.uid, server.uid)
        os.setresuid(server.uid, server.uid, server.uid)  # leaving uid 0 clears every capability
    elif os.geteuid() == 0:  # root inside our user namespace: keep the uid, lose the powers
        k.drop_capabilities()
    k.prctl(PR_SET_NO_NEW_PRIVS, 1)
    if server.seccomp is not None:
        _install_seccomp(k, server.seccomp)


def _exec_program(source: str) -> int:
    """Run the source as ``__main__``, as ``python main.py`` would, and return its exit code."""
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    sys.argv = ["main.py"]
    sys.dont_write_bytecode = True
    random.seed(0)  # every fork reseeds random from the OS (os.register_at_fork): make it the same for every run
    code = 0
    try:
        exec(compile(source, "main.py", "exec"), main.__dict__)  # noqa: S102 -- running it is the point
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException as e:  # noqa: BLE001 -- as the interpreter would: print it, exit 1
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # from the program's frames on
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken by the program
            pass
    return code & 0xFF


def _memfd(data: bytes) -> int:
    fd = os.memfd_create("stdin", 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read_until_eof(fd: int, deadline: float) -> bytes:
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return b"no word from the program's set-up"
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _drain(fds: set[int], buffers: dict[int, list[bytes]], budget: int) -> int:
    """Read what the (now dead) program left in its pipes, up to what the output limit still allows."""
    total = 0
    for fd in fds:
        while total <= budget and select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            buffers[fd].append(chunk)
            total += len(chunk)
    return total


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), p) for p in points]



def _closed_ancestors(path: str) -> list[tuple[str, str]]:
    """(folder, next entry) for each folder on the way to ``path`` that others may not pass through."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    found = []
    for depth in range(1, len(parts)):
        folder = os.sep + os.path.join(*parts[:depth])
        if not os.stat(folder).st_mode & 0o001:
            found.append((folder, parts[depth]))
    return found


def _children(pid: int) -> list[int]:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return kids


def _descendants(pid: int) -> set[int]:
    found, frontier = set(), [pid]
    while frontier:
        kids = [k for p in frontier for k in _children(p) if k not in found]
        found.update(kids)
        frontier = kids
    return found


_HAS_SMAPS_ROLLUP = os.path.exists("/proc/self/smaps_rollup")
_HAS_SCHEDSTAT = os.path.exists("/proc/self/schedstat")


class _Watch:
    """The limits a running program is held to, read from the kernel at growing intervals (5 ms, doubling to 50 ms).

    The wall-clock deadline grows by the longest time one of the program's threads waited for a CPU, so a starved
    program is not a timeout; the wait is the kernel's account, which no program can raise without CPU time being
    spent (its own, which its limit bounds, or a neighbour's), and the growth stops at ``limits.wall_stretch``."""

    def __init__(self, server: _Server, limits: Limits, start: float):
        self.server, self.limits, self.start = server, limits, start
        self.deadline = start + limits.wall
        self.interval, self.next_check, self.cpu = 0.005, start + 0.005, 0.0
        self.tmpfs_base = {f: s[6] for f, s in server.tmpfs_state.items()}

    def check(self) -> tuple[str | None, str]:
        limits, server = self.limits, self.server
        pids = _descendants(os.getpid())
        memory, cpu, waited = _tree_usage(pids, limits.memory, _HAS_SCHEDSTAT and limits.wall_stretch > 0)
        if server.memory.cgroup is not None:
            memory = limits.memory + 1 if server.memory.over() else 0
        else:
            memory += _held_shared_memory(pids, set(), server.mount_ns)
            for folder, base in self.tmpfs_base.items():
                fs = os.statvfs(folder)
                memory += max(0, fs.f_blocks - fs.f_bfree - base) * fs.f_frsize
        self.cpu = max(self.cpu, cpu, server.cpu.used())
        self.deadline = self.start + limits.wall + min(waited, limits.wall * limits.wall_stretch)
        self.interval = min(self.interval * 2, 0.05)
        self.next_check = time.monotonic() + self.interval
        if memory > limits.memory:
            return "memory_limit", f"more than {limits.memory >> 20} MiB of memory"
        if self.cpu > limits.cpu_time:
            return "timeout", f"CPU time limit of {limits.cpu_time:g}s"
        return None, ""


def _tree_usage(pids: Iterable[int], memory_limit: int, waits: bool) -> tuple[int, float, float]:
    """Memory, CPU seconds and the longest run-queue wait of one thread (seconds) of the live processes ``pids``,
    from /proc (10 ms CPU resolution). Memory is the proportional set size (pages a fork shares with its parent count
    once, not once per process), read only when the resident pages alone exceed ``memory_limit``: PSS is never more
    than RSS, and reading it walks a process's page tables (about a millisecond for a fork of a server holding
    numpy), once per check."""
    resident: list[tuple[int, int]] = []
    ticks, waited = 0, 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
            resident.append((p, int(fields[21])))
        except (OSError, IndexError, ValueError):
            continue  # it ended meanwhile
        if waits:
            waited = max(waited, _longest_wait(p))
    memory = sum(pages for _, pages in resident) * resource.getpagesize()
    if memory > memory_limit:
        memory = sum(_proportional_memory(p, pages) for p, pages in resident)
    return memory, ticks / os.sysconf("SC_CLK_TCK"), waited / 1e9


def _longest_wait(pid: int) -> int:
    """Nanoseconds the thread of ``pid`` that waited longest for a CPU spent waiting, among threads of the normal
    policy at the normal priority: a thread set to idle, batch or a higher nice waits by its own choice (pinned to a
    busy CPU it would wait without end, at no cost)."""
    longest = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[16] != "0" or fields[38] != "0":  # nice, policy (SCHED_NORMAL)
                continue
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                longest = max(longest, int(f.read().split()[1]))
        except (OSError, IndexError, ValueError):
            continue
    return longest


def _proportional_memory(pid: int, rss_pages: int) -> int:
    """A process that ended between reading its stat and its smaps_rollup holds nothing: counting its stale resident
    pages in full would add the memory it shared to the total once more (four forks exiting at once did)."""
    if not _HAS_SMAPS_ROLLUP:
        return rss_pages * resource.getpagesize()  # an old kernel: resident pages, shared ones counted each time
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0  # gone, or a zombie without an address space


def _kill_if_child_of(pid: int, parents: set[int]) -> None:
    """Kill ``pid`` through a pidfd after checking its parent, so a recycled pid is never hit."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        if ppid in parents:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)


def _remove_tree(path: str) -> None:
    """Remove a folder however deep it goes (``shutil.rmtree`` recurses, and gives up on a deep enough chain);
    raise if anything is left."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        pass
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], check=False, capture_output=True)
    if os.path.lexists(path):
        raise OSError(f"could not remove {path}")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        _remove_tree(path)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass


def _remove_owned_by(uid: int, folders: Sequence[str]) -> None:
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                owned = entry.stat(follow_symlinks=False).st_uid == uid
            except OSError:
                continue  # gone meanwhile
            if owned:
                _remove(entry.path)  # a failure retires the server


def _remove_sysv_ipc(libc: ctypes.CDLL) -> None:
    """Remove SysV shared memory, semaphores and queues: in the server's own IPC namespace, all are the programs'."""
    for kind, remove in (("shm", libc.shmctl), ("sem", libc.semctl), ("msg", libc.msgctl)):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            remove(int(line.split()[1]), 0, 0)  # IPC_RMID
