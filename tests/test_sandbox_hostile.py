"""Hostile programs against the sandbox's walls: what they may see, what they leave behind, what they hold, how long
they may take. Each batch has a right program beside the hostile ones, run on the same servers."""

from __future__ import annotations

import os
import socket
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from sandbox import Limits, Program, RunResult, Sandbox

ROOT = Path(__file__).resolve().parent.parent
LIMITS = Limits(cpu_time=2.0, wall_time=5.0)
RIGHT = "print(sum(range(10)))"  # the control: must pass, whatever ran before it on the same server


def run(box: Sandbox, source: str, limits: Limits = LIMITS) -> RunResult:
    return box.run(Program(textwrap.dedent(source), limits=limits))


def assert_right_still_runs(box: Sandbox) -> None:
    for _ in range(box.workers):  # reach every server
        r = run(box, RIGHT)
        assert (r.status, r.exit_code, r.stdout) == ("exited", 0, "45\n"), r


@pytest.fixture(scope="module")
def secret_files() -> dict[str, str]:
    """Files an answer would like to read: expected values in the project, a cache, /var/tmp, the caller's /tmp."""
    token = uuid.uuid4().hex
    home = Path(os.path.expanduser(f"~/.cache/q-rl-test-secret-{token}"))
    places = {
        "project": ROOT / f"secret-{token}.jsonl",
        "cache": home / f"{token}.json",
        "var_tmp": Path("/var/tmp") / f"qrl-secret-{token}",
        "tmp": Path(tempfile.gettempdir()) / f"qrl-secret-{token}",
    }
    for path in places.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'{{"expected": "{token}"}}')
        path.chmod(0o644)
    yield {name: str(path) for name, path in places.items()} | {"token": token}
    for path in places.values():
        path.unlink(missing_ok=True)
    home.rmdir()


@pytest.fixture(scope="module")
def box(secret_files) -> Sandbox:
    with Sandbox(workers=2, hide=[]) as sb:
        yield sb


needs_root_fs = pytest.mark.skipif(os.geteuid() != 0 and not os.path.exists("/proc/self/ns/user"),
                                   reason="a mount namespace needs root or user namespaces")  # fmt: skip


# ------------------------------------------------------------------------------------------------ 1: what it sees


def test_no_host_file_is_readable(box: Sandbox, secret_files: dict[str, str]) -> None:
    """By path or by walking every folder: the project, caches, /var/tmp and the caller's /tmp are not there."""
    assert box.isolation.mount_namespace
    paths = [v for k, v in secret_files.items() if k != "token"]
    source = f"""
    import os
    found = []  # what an answer finds of the files by path, or by walking every folder it can see
    for path in {paths!r}:
        try:
            found.append(open(path).read())
        except OSError:
            pass
    for top in ("/", "/proc/1/root", "/proc/self/cwd"):
        for folder, dirs, files in os.walk(top):
            if folder.startswith(("/proc", "/sys", "/dev")) and top == "/":
                dirs[:] = []
                continue
            for name in files:
                if {secret_files["token"]!r} in name:
                    found.append(os.path.join(folder, name))
    print(found)
    print(sorted(os.listdir("/")))
    """
    r = run(box, source, Limits(cpu_time=8, wall_time=20))
    assert r.status == "exited" and r.exit_code == 0, r
    assert secret_files["token"] not in r.stdout and r.stdout.startswith("[]\n"), r.stdout[:500]
    visible = set(eval(r.stdout.splitlines()[1]))
    assert not visible & {"home", "root", "var", "work", "opt", "srv", "mnt", "run"} - _interpreter_tops()
    assert_right_still_runs(box)


def _interpreter_tops() -> set[str]:
    """Top-level folders the interpreter itself lives in (here Python is under /root): they must be visible."""
    import sys

    return {Path(p).resolve().parts[1] for p in (sys.prefix, sys.base_prefix)}


def test_only_the_interpreter_is_visible_where_it_lives(box: Sandbox) -> None:
    """Python may live under a home folder (/root/.pyenv here): its folder is there, the rest of home is not."""
    import sys

    home = Path(sys.base_prefix).resolve()
    source = f"""
    import os, json, numpy
    print(os.path.isfile(json.__file__), numpy.arange(4).sum())
    parent = {str(home.parent)!r}
    print(sorted(os.listdir(parent)))
    """
    r = run(box, source)
    assert r.exit_code == 0, r
    first, second = r.stdout.splitlines()
    assert first == "True 6"
    assert eval(second) == [home.name]


def test_hidden_files_inside_visible_folders_read_empty(tmp_path: Path) -> None:
    shown = tmp_path / "shown"
    shown.mkdir()
    (shown / "problems.jsonl").write_text("expected 42")
    (shown / "tool.txt").write_text("needed")
    shown.chmod(0o755)
    tmp_path.chmod(0o755)
    with Sandbox(workers=1, expose=[str(shown)], hide=[str(shown / "problems.jsonl")]) as sb:
        r = run(sb, f"print(repr(open({str(shown / 'problems.jsonl')!r}).read()), open({str(shown / 'tool.txt')!r}).read())")
    assert r.stdout == "'' needed\n", r


# ------------------------------------------------------------------------------------------------ 7: host sockets


def test_host_unix_sockets_are_unreachable(box: Sandbox, tmp_path: Path) -> None:
    """Pathname sockets in the caller's /tmp and in the project (read-only mounts do not stop a connect), and an
    abstract one: none exists for a program."""
    paths = [Path(tempfile.gettempdir()) / f"qrl-sock-{uuid.uuid4().hex[:8]}", ROOT / f".qrl-sock-{uuid.uuid4().hex[:8]}"]
    abstract = f"\0qrl-test-{uuid.uuid4().hex[:8]}"
    servers = []
    for address in [*map(str, paths), abstract]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(address)
        s.listen(1)
        servers.append(s)
    for path in paths:
        os.chmod(path, 0o777)
    try:
        source = f"""
        import socket
        for address in {[*map(str, paths), abstract]!r}:
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                c.connect(address)
                print("connected", repr(address))
            except OSError as e:
                print("refused", type(e).__name__)
        a, b = socket.socketpair()
        a.send(b"own")
        print(b.recv(3).decode())
        """
        r = run(box, source)
        assert r.exit_code == 0 and "connected" not in r.stdout and r.stdout.endswith("own\n"), r
    finally:
        for s in servers:
            s.close()
        for path in paths:
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ 3: left behind


@pytest.mark.parametrize("namespaces", [True, False])
def test_what_a_program_leaves_costs_no_later_program(namespaces: bool) -> None:
    """A folder chain too deep to remove recursively, modes taken away from /tmp and /dev/shm, a POSIX message
    queue, xattrs: the next program on the same server finds a clean, writable /tmp and /dev/shm."""
    hostile = [
        """
        import os
        os.chdir(os.environ.get("TMPDIR", "/tmp"))
        for _ in range(3000):
            os.mkdir("d")
            os.chdir("d")
        print("deep")
        """,
        """
        import os
        for folder in ("/tmp", "/dev/shm", os.environ.get("TMPDIR", "/tmp")):
            try:
                os.chmod(folder, 0)
            except OSError:
                pass
        print("closed")
        """,
        """
        import ctypes, os
        rt = ctypes.CDLL("librt.so.1", use_errno=True)
        rt.mq_open.restype = ctypes.c_int
        fd = rt.mq_open(b"/qrl-left", os.O_CREAT | os.O_RDWR, 0o600, None)
        print("queue", fd >= 0)
        """,
    ]
    probe = """
    import ctypes, os
    tmp = os.environ.get("TMPDIR", "/tmp")
    open(os.path.join(tmp, "mine"), "w").write("x")
    print(sorted(os.listdir(tmp)))
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    print("queue left", rt.mq_open(b"/qrl-left", os.O_RDONLY, 0, None) >= 0)
    """
    with Sandbox(workers=1, namespaces=namespaces) as sb:
        for source in hostile:
            r = run(sb, source, Limits(cpu_time=5, wall_time=20))
            assert r.status == "exited" and r.exit_code == 0, r
            after = run(sb, probe)
            assert after.exit_code == 0 and after.stdout.startswith("['mine']\n"), (source, after)
            if namespaces:
                assert after.stdout.endswith("queue left False\n"), after
            assert_right_still_runs(sb)


def test_hard_links_are_bounded(box: Sandbox) -> None:
    """Hundreds of thousands of hard links would make the clean-up slow: the private tmpfs holds a few thousand."""
    source = """
    import os
    open("/tmp/f", "w").close()
    made = 0
    try:
        for i in range(200000):
            os.link("/tmp/f", f"/tmp/l{i}")
            made += 1
    except OSError as e:
        print(type(e).__name__, made < 10000)
    """
    r = run(box, source, Limits(cpu_time=5, wall_time=20))
    assert r.stdout == "OSError True\n", r
    start = time.monotonic()
    assert_right_still_runs(box)
    assert time.monotonic() - start < 2


# ------------------------------------------------------------------------------------------------ 5: memory


MEMFD_MAPPED = """
import mmap, os
maps = []
for _ in range(120):                       # 120 x 15 MiB, each under the file size limit
    fd = os.memfd_create("x")
    os.ftruncate(fd, 15 << 20)
    m = mmap.mmap(fd, 15 << 20)
    m.write(b"x" * (15 << 20))
    maps.append(m)
    os.close(fd)
print("held")
"""
MEMFD_OPEN = """
import os
fds = []
for _ in range(120):                       # written, never mapped: in no resident set
    fd = os.memfd_create("x")
    for _ in range(15):
        os.write(fd, b"x" * (1 << 20))
    fds.append(fd)
print("held")
"""
MEMFD_IN_FLIGHT = """
import os, socket
a, b = socket.socketpair(socket.AF_UNIX)
for _ in range(120):                       # held only by a message in flight: no descriptor of the program's
    fd = os.memfd_create("x")
    for _ in range(15):
        os.write(fd, b"x" * (1 << 20))
    socket.send_fds(a, [b"x"], [fd])
    os.close(fd)
print("held")
"""
SHM_FILES = """
import os
for folder in ("/dev/shm", "/tmp"):
    for i in range(4):
        with open(f"{folder}/f{i}", "wb") as f:
            f.write(b"x" * (15 << 20))
print("held")
"""
MEMORY = Limits(cpu_time=8, wall_time=30, memory=256 << 20)


@pytest.mark.parametrize("cgroup", [True, False])
def test_memory_held_outside_the_resident_set_counts(cgroup: bool) -> None:
    cases = [MEMFD_MAPPED, MEMFD_OPEN, SHM_FILES] + ([MEMFD_IN_FLIGHT] if cgroup else [])
    with Sandbox(workers=1, cgroups=cgroup) as sb:
        if cgroup and not sb.isolation.memory_cgroup:
            pytest.fail("no memory cgroup could be made here, as root: " + "; ".join(sb.isolation.notes))
        for source in cases:
            r = run(sb, source, MEMORY if "/dev/shm" not in source else replace_memory(MEMORY, 64 << 20))
            assert r.status == "memory_limit" and "held" not in r.stdout, (source, r)
            right = run(sb, "x = bytearray(32 << 20)\nprint('ok')", MEMORY)
            assert right.status == "exited" and right.stdout == "ok\n", right


def replace_memory(limits: Limits, memory: int) -> Limits:
    from dataclasses import replace

    return replace(limits, memory=memory)


# ------------------------------------------------------------------------------------------------ 6: wall clock


def test_the_wall_backstop_ignores_the_load_average() -> None:
    """The backstop is 2 x CPU + 1 s; the load average (which blocked tasks inflate for free) plays no part."""
    assert Limits(cpu_time=0.5).wall == 2.0
    assert Limits(cpu_time=0.5, wall_time=7).wall == 7 and Limits(cpu_time=0.5, wall_time=7).wall_stretch == 0


def test_blocked_programs_cannot_stretch_their_limits() -> None:
    """Two programs that each block many threads (sleeping, waiting on pipes) at once: both end at their own
    backstop, and a right program beside them is untouched."""
    blocker = """
    import os, threading, time
    def block():
        r, w = os.pipe()
        os.read(r, 1)
    for _ in range(30):
        threading.Thread(target=block, daemon=True).start()
    for _ in range(20):
        if os.fork() == 0:
            time.sleep(1000)
    time.sleep(1000)
    """
    limits = Limits(cpu_time=0.5)  # default backstop: 2 s
    with Sandbox(workers=3) as sb:
        futures = [sb.submit(Program(textwrap.dedent(blocker), limits=limits)) for _ in range(2)]
        right = sb.submit(Program(RIGHT, limits=limits))
        results = [f.result() for f in futures]
        assert right.result().stdout == "45\n"
    for r in results:
        assert r.status == "timeout" and r.wall_time < 3.5, r


def test_threads_that_choose_to_wait_do_not_stretch_the_wall() -> None:
    """A thread set to SCHED_IDLE and pinned to a busy CPU waits for it without end, at no cost: its wait is not
    counted; a normal thread's is."""
    import subprocess
    import sys

    import sandbox

    waiter = textwrap.dedent("""
        import os, sys, threading, time
        os.sched_setaffinity(0, {0})
        if sys.argv[1] == "idle":  # every thread of this process idle (the spinning one inherits it)
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        def spin():
            while True:
                pass
        threading.Thread(target=spin, daemon=True).start()
        time.sleep(60)
    """)
    spin = "import os, time\nos.sched_setaffinity(0, {0})\nend = time.time() + 3\nwhile time.time() < end: pass"
    busy = subprocess.Popen([sys.executable, "-c", spin])
    waiters = {kind: subprocess.Popen([sys.executable, "-c", waiter, kind]) for kind in ("idle", "normal")}
    try:
        time.sleep(1.5)
        waited = {kind: sandbox._longest_wait(p.pid) / 1e9 for kind, p in waiters.items()}
    finally:
        for p in [busy, *waiters.values()]:
            p.kill()
            p.wait()
    assert waited["idle"] == 0 and waited["normal"] > 0.2, waited


# ------------------------------------------------------------------------------------------------ CPU counted


AUTOREAP = """
import os, signal, time
signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # the kernel reaps the children: their CPU is in no rusage
r, w = os.pipe()
for i in range(8):                              # 8 x 0.5 s of CPU under a 2 s limit
    if os.fork() == 0:
        end = time.process_time() + 0.5
        while time.process_time() < end:
            pass
        os.write(w, b"x")
        os._exit(0)
    if i % 2:
        os.read(r, 1)
        os.read(r, 1)
print("done")
"""


def test_cpu_of_children_the_kernel_reaps_unseen_counts(box: Sandbox) -> None:
    if not box.isolation.cpu_cgroup:
        pytest.fail("no CPU cgroup could be made here, as root: " + "; ".join(box.isolation.notes))
    r = run(box, AUTOREAP, Limits(cpu_time=2.0, wall_time=20))
    assert r.status == "timeout" and "done" not in r.stdout and r.cpu_time >= 2.0, r
    right = run(box, "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
                     "print('ok')", Limits(cpu_time=2.0, wall_time=20))  # fmt: skip
    assert right.stdout == "ok\n" and 0.25 < right.cpu_time < 1.0, right  # the server's own CPU is not charged


# ------------------------------------------------------------------------------------------------ system calls


def test_no_keyrings_and_no_new_namespaces(box: Sandbox) -> None:
    """The uid's keyring outlives the run (and the server); a user namespace gives every capability inside it. Both
    are refused; threads, forks and subprocesses, which the same system calls serve, still work."""
    source = """
    import ctypes, os, subprocess, threading
    libc = ctypes.CDLL(None, use_errno=True)
    key = libc.syscall(248 if os.uname().machine == "x86_64" else 217, b"user", b"qrl-left", b"x", 1, -4)
    print("add_key", key, ctypes.get_errno())
    print("unshare", libc.unshare(0x10000000), ctypes.get_errno())
    t = threading.Thread(target=lambda: None)
    t.start(); t.join()
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    print(subprocess.run(["echo", "sub"], capture_output=True, text=True).stdout.strip())
    """
    if not box.isolation.seccomp:
        pytest.fail("no system call filter on this machine: " + "; ".join(box.isolation.notes))
    r = run(box, source)
    assert r.exit_code == 0, r
    assert r.stdout == "add_key -1 1\nunshare -1 1\nfork 7\nsub\n", r.stdout
    assert_right_still_runs(box)
