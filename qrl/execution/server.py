"""The sandbox server: the process a worker starts (``serve``), which enters namespaces of its own, preloads
modules, and then forks one child per program, sets it up (limits, descriptors, uid, capabilities, system call
filter), watches it against its limits, and cleans up after it. It answers the caller over the framed pipe protocol
of ``qrl.execution.sandbox``; everything here runs in the server process and its children."""

from __future__ import annotations

import builtins
import fcntl
import gc
import json
import math
import os
import random
import resource
import select
import signal
import sys
import tempfile
import time
import traceback
import types
from dataclasses import asdict

from qrl.execution.accounting import (
    HAS_SCHEDSTAT,
    CpuAccount,
    MemoryAccount,
    descendants,
    held_shared_memory,
    tree_usage,
)
from qrl.execution.filesystem import ProgramRoot, closed_ancestors, python_paths, remove_owned_by, remove_tree
from qrl.execution.kernel import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    PR_SET_CHILD_SUBREAPER,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    Kernel,
    seccomp_filter,
)
from qrl.execution.sandbox import (
    REPORT_FD,
    UID_BASE,
    UID_COUNT,
    Isolation,
    Limits,
    PipeClosed,
    RunResult,
    SandboxError,
    receive_message,
    send_message,
)


def serve(spec_json: str, slot: str, caller_pid: str) -> None:
    """The server process's entry point: the sandbox's spec (JSON), the worker's slot and the caller's pid, as the
    worker passes them on the command line. Answers requests until the caller closes the pipe; never returns."""
    spec, slot, caller_pid = json.loads(spec_json), int(slot), int(caller_pid)  # type: ignore[assignment]
    kernel = Kernel()
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
        send_message(replies, {"error": f"{type(e).__name__}: {e}"})
        os._exit(1)
    cgroups = [server.memory.cgroup, server.cpu.cgroup if server.cpu.owned else None]
    send_message(replies, {"isolation": asdict(server.isolation), "cgroups": [c for c in cgroups if c]})
    server.loop()


def _enter_namespaces(kernel: Kernel) -> int:
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
    """Runs the caller's requests one at a time, each program in a fresh child, until the caller hangs up."""

    def __init__(self, kernel: Kernel, flags: int, slot: int, spec: dict, requests: int, replies: int):
        self.kernel, self.requests, self.replies = kernel, requests, replies
        as_root = os.geteuid() == 0 and not flags & CLONE_NEWUSER
        self.uid = _claim_uid(slot) if as_root else None
        self.mount_ns = bool(flags & CLONE_NEWNS)
        self.pid_ns = bool(flags & CLONE_NEWPID)
        self.ipc_ns = bool(flags & CLONE_NEWIPC)
        for name in spec["preload"]:  # before the file system shrinks to the interpreter: the toolkit's own modules
            try:
                __import__(name)
            except ImportError:
                pass  # numpy is optional, and so is anything else preloaded for speed only
        self.memory = MemoryAccount.create(spec.get("cgroups", True))
        self.cpu = CpuAccount.create(spec.get("cgroups", True), self.memory)
        self.root = ProgramRoot(kernel, int(spec["tmp_size"]), self.uid, own_proc=self.pid_ns, mqueue=self.ipc_ns)
        if self.mount_ns:
            self.root.build(python_paths() + list(spec.get("expose", ())), spec.get("hide", ()))
        self.pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY) if self.pid_ns else -1
        self.seccomp = seccomp_filter()
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
            notes=self._shortfalls(flags, as_root),
        )
        self._check_isolation()

    def _shortfalls(self, flags: int, as_root: bool) -> tuple[str, ...]:
        """What did not hold here, in words, for ``Isolation.notes``."""
        notes: list[str] = []
        if self.cpu.cgroup is None:
            notes.append("no cgroup counts CPU time: children the kernel reaps unseen (SIGCHLD ignored) are not "
                         "counted")  # fmt: skip
        if self.memory.cgroup is None:
            notes.append("no memory cgroup of its own: memory is the processes' PSS plus the shared memory behind "
                         "their descriptors and the private /tmp and /dev/shm")  # fmt: skip
        if not flags:
            notes.append("no namespaces: programs share the network and see the file system through permissions only")
        if self.uid is not None and not self.mount_ns and any(map(closed_ancestors, python_paths())):
            notes.append("the interpreter lies under a folder closed to other users: programs can import only what "
                         "the server preloaded")  # fmt: skip
        if not as_root:
            notes.append("not root: no uid of its own, so the process count is bounded only by the wall clock")
        if self.seccomp is None:
            notes.append(f"no system call filter on {os.uname().machine}: programs may use keyrings and make "
                         "namespaces")  # fmt: skip
        if not HAS_SCHEDSTAT:
            notes.append("no /proc/<pid>/schedstat: the wall-clock backstop does not stretch for starved programs")
        return tuple(notes)

    def _check_isolation(self) -> None:
        """Run one empty program through the real path: if isolation set-up fails here, it would fail every run."""
        result = self.run({"source": "pass", "stdin": "", "limits": asdict(Limits(cpu_time=5, wall_time=10))})
        if result.status != "exited" or result.exit_code != 0:
            raise SandboxError(f"a trivial program failed: {result}")

    def loop(self) -> None:
        while True:
            try:
                request = receive_message(self.requests)
            except PipeClosed:  # the caller closed the pipe: we are done
                os._exit(0)
            self.retire = False
            try:
                result = self.run(request)
            except Exception as e:  # noqa: BLE001 -- a bug of ours, never the program's doing: say so instead of dying
                self._kill_leftovers()
                result = RunResult("infra_error", detail=f"sandbox server error: {type(e).__name__}: {e}")
            send_message(self.replies, {**asdict(result), "retire": self.retire})
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
            pids = descendants(os.getpid())
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
            self.root.renew_touched_tmpfs()
            if self.ipc_ns:
                self.kernel.remove_sysv_ipc()
                for name in os.listdir("/dev/mqueue"):
                    os.unlink(os.path.join("/dev/mqueue", name))
        else:
            remove_tree(workdir)
            if self.uid is not None:
                remove_owned_by(self.uid, ("/tmp", "/var/tmp", "/dev/shm"))


def _program_child(server: _Server, source: str, limits: Limits, workdir: str, stdin_fd: int, out_w: int, err_w: int,
                   rep_w: int, ctl_w: int) -> None:  # fmt: skip
    """Runs in the forked child: finish isolating it, then run the program. Never returns."""
    try:
        # Its own process group: a new session would cost a scheduler autogroup (milliseconds).
        os.setpgid(0, 0)
        os.chdir(workdir)
        server.memory.mark_program()
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
        k.install_seccomp(server.seccomp)


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


class _Watch:
    """The limits a running program is held to, read from the kernel at growing intervals (5 ms, doubling to 50 ms).

    The wall-clock deadline grows by the longest time one of the program's threads waited for a CPU, so a starved
    program is not a timeout; the wait is the kernel's account, which no program can raise without CPU time being
    spent (its own, which its limit bounds, or a neighbour's), and the growth stops at ``limits.wall_stretch``."""

    def __init__(self, server: _Server, limits: Limits, start: float):
        self.server, self.limits, self.start = server, limits, start
        self.deadline = start + limits.wall
        self.interval, self.next_check, self.cpu = 0.005, start + 0.005, 0.0

    def check(self) -> tuple[str | None, str]:
        limits, server = self.limits, self.server
        pids = descendants(os.getpid())
        counted = server.memory.cgroup is not None  # then the cgroup's count decides: no PSS walk for nothing
        pss_above = math.inf if counted else limits.memory
        memory, cpu, waited = tree_usage(pids, pss_above, HAS_SCHEDSTAT and limits.wall_stretch > 0)
        if counted:
            memory = limits.memory + 1 if server.memory.over() else 0
        else:
            memory += held_shared_memory(pids, set(), server.mount_ns)
            memory += server.root.tmpfs_growth()
        self.cpu = max(self.cpu, cpu, server.cpu.used())
        self.deadline = self.start + limits.wall + min(waited, limits.wall * limits.wall_stretch)
        self.interval = min(self.interval * 2, 0.05)
        self.next_check = time.monotonic() + self.interval
        if memory > limits.memory:
            return "memory_limit", f"more than {limits.memory >> 20} MiB of memory"
        if self.cpu > limits.cpu_time:
            return "timeout", f"CPU time limit of {limits.cpu_time:g}s"
        return None, ""


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
