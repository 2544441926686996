"""What a program holds and uses, as the kernel counts it: memory and CPU cgroups of the server's own where they can
be made, otherwise /proc (proportional set sizes, CPU ticks, the shared memory behind descriptors); the run-queue
waits that stretch the wall-clock backstop; the process tree below the server."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable

_HAS_SMAPS_ROLLUP = os.path.exists("/proc/self/smaps_rollup")
HAS_SCHEDSTAT = os.path.exists("/proc/self/schedstat")


class MemoryAccount:
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
    def create(cls, wanted: bool) -> MemoryAccount:
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

    def mark_program(self) -> None:
        """In the program's process, while it is still privileged: where the kernel limits it, the kernel's OOM
        killer takes the program first (the program cannot lower this again)."""
        if self.cgroup is not None:
            _write_file("/proc/self/oom_score_adj", "1000")


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


class CpuAccount:
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
    def create(cls, wanted: bool, memory: MemoryAccount) -> CpuAccount:
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


def held_shared_memory(pids: Iterable[int], seen: set[tuple[int, int]], private_tmp: bool) -> int:
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


def children(pid: int) -> list[int]:
    """The processes ``pid``'s threads started (none once it is gone)."""
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


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    found, frontier = set(), [pid]
    while frontier:
        kids = [k for p in frontier for k in children(p) if k not in found]
        found.update(kids)
        frontier = kids
    return found


def tree_usage(pids: Iterable[int], memory_limit: float, waits: bool) -> tuple[int, float, float]:
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
            waited = max(waited, longest_wait(p))
    memory = sum(pages for _, pages in resident) * resource.getpagesize()
    if memory > memory_limit:
        memory = sum(proportional_memory(p, pages) for p, pages in resident)
    return memory, ticks / os.sysconf("SC_CLK_TCK"), waited / 1e9


def longest_wait(pid: int) -> int:
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


def proportional_memory(pid: int, rss_pages: int) -> int:
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
