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

This is the caller's side: what a program may use, what a run gives back, the worker threads and the protocol they
speak with their servers. The server itself is ``qrl.execution.server``.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
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


_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
    """The server imports this package from where this file lies (``PYTHONPATH``), never from the working folder
    (``-P``): a program's files in its working folder can never shadow a module."""
    folders = sorted({os.path.abspath(p) for p in expose if os.path.isdir(p)})
    # The toolkit's own folder too: installed, it lies among the visible packages and holds the shipped problems
    # (the servers preloaded what programs run of it).
    hide = [*hide, os.path.join(_PACKAGE_PARENT, "qrl")]
    hidden = sorted({os.path.abspath(p) for p in hide if os.path.lexists(p)})
    spec = {"preload": preload, **options, "expose": folders, "hide": hidden}
    bootstrap = "import sys; from qrl.execution import server; server.serve(*sys.argv[1:])"
    return [sys.executable, "-s", "-P", "-c", bootstrap, json.dumps(spec)]


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
            "PYTHONPATH": _PACKAGE_PARENT,  # this very package, installed or not; -P keeps the working folder out
        }
        self.proc = subprocess.Popen(
            [*self.args, str(self.slot), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        try:
            hello = receive_message(self.proc.stdout.fileno(), timeout=120)
        except PipeClosed:
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
            except PipeClosed:
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
            send_message(self.proc.stdin.fileno(), request)
        except OSError:
            raise PipeClosed from None
        reply = receive_message(self.proc.stdout.fileno(), timeout=lim.wall * (1 + lim.wall_stretch) + 30)
        if reply.pop("retire", False):  # its clean-up failed: the next program gets a new server
            self._stop()
        return RunResult(**reply)


# ----------------------------------------------------------------------------------------------------------------
# The protocol between a worker and its server: each message is JSON, after its length (4 bytes, big-endian).


class PipeClosed(Exception):
    """The other end of a protocol pipe closed it: for the caller, the server died; for the server, the caller left."""


def send_message(fd: int, message: dict) -> None:
    """Write one message on ``fd`` (a pipe), whole."""
    data = json.dumps(message).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data) :]


def receive_message(fd: int, timeout: float | None = None) -> dict:
    """Read one message from ``fd``: PipeClosed at end of input, TimeoutError past ``timeout`` seconds."""
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
            raise PipeClosed
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
