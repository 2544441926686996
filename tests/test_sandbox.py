"""The executor: limits, isolation, cleanup, and hostile programs that must cost only their own run."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from sandbox_helpers import wait_until_idle

from qrl.execution import accounting, sandbox
from qrl.execution.sandbox import Limits, Program, RunResult, Sandbox, SandboxError

ROOT = Path(__file__).resolve().parent.parent
FAST = Limits(cpu_time=0.5, wall_time=2.0)


@pytest.fixture(scope="module")
def sb() -> Sandbox:
    with Sandbox(workers=2) as box:
        yield box


@pytest.fixture(scope="module")
def plain() -> Sandbox:
    """The fallback when the kernel permits no namespaces (here: asked for none)."""
    with Sandbox(workers=1, namespaces=False) as box:
        yield box


def run(box: Sandbox, source: str, limits: Limits = FAST, stdin: bytes = b"") -> RunResult:
    return box.run(Program(textwrap.dedent(source), stdin, limits))


def processes_of_sandbox_uids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                uid = os.stat(f"/proc/{entry}").st_uid
            except OSError:
                continue
            if sandbox.UID_BASE <= uid < sandbox.UID_BASE + sandbox.UID_COUNT:
                pids.append(int(entry))
    return pids


# ------------------------------------------------------------------------------------------------ basics


def test_isolation_is_reported(sb: Sandbox) -> None:
    lines = sb.isolation.describe()
    assert lines[0].startswith("programs run as") and len(lines) >= 5
    if os.geteuid() == 0 and sys.platform == "linux":  # what a root Linux box with namespaces gives
        iso = sb.isolation
        assert iso.pid_namespace and iso.network_namespace and iso.mount_namespace and iso.separate_uid


def test_folders_under_tmp_stay_readable_and_untouched() -> None:
    """A checkout or virtualenv in /tmp (CI often clones there) is reachable, read-only, under the private /tmp."""
    import shutil
    import tempfile

    kept = Path(tempfile.mkdtemp(prefix="qrl-test-checkout-", dir="/tmp"))
    try:
        kept.chmod(0o755)  # a clone's usual mode; folders closed to others stay closed to the programs
        (kept / "data.txt").write_text("kept")
        with Sandbox(workers=1, expose=[str(kept)]) as box:
            r = run(box, f"print(open({str(kept / 'data.txt')!r}).read())\nopen({str(kept / 'x')!r}, 'w')")
            assert r.stdout == "kept\n" and r.status == "exited" and r.exit_code == 1  # read yes, write no
            assert run(box, "print(1)").stdout == "1\n"  # the clean-up after a run left the server working
        assert sorted(p.name for p in kept.iterdir()) == ["data.txt"]
    finally:
        shutil.rmtree(kept)


def test_exit_code_output_and_report(sb: Sandbox) -> None:
    r = run(
        sb, "import os, sys\nprint('out')\nprint('err', file=sys.stderr)\nos.write(3, b'rep')\nsys.exit(3)"
    )
    assert (r.status, r.exit_code, r.stdout, r.stderr, r.report) == ("exited", 3, "out\n", "err\n", "rep")
    assert r.cpu_time > 0 and r.wall_time > 0 and r.peak_memory > 0


def test_exceptions_and_syntax_errors_exit_1(sb: Sandbox) -> None:
    r = run(sb, "raise ValueError('boom')")
    assert r.exit_code == 1 and "ValueError: boom" in r.stderr and "sandbox.py" not in r.stderr
    assert run(sb, "def f(:").exit_code == 1


def test_stdin_is_closed_unless_given(sb: Sandbox) -> None:
    r = run(sb, "input()")
    assert r.exit_code == 1 and "EOFError" in r.stderr and r.wall_time < 1
    assert run(sb, "print(input()[::-1])", stdin=b"abc\n").stdout == "cba\n"


def test_runs_are_deterministic(sb: Sandbox) -> None:
    src = "import random\nprint(random.random(), hash('abc'), set('abcdef'))"
    if importlib.util.find_spec("numpy"):
        src += "\nimport numpy\nprint(numpy.random.rand())"
    assert len({run(sb, src).stdout for _ in range(4)}) == 1


@pytest.mark.parametrize("box", ["sb", "plain"])
def test_programs_see_only_their_own_environment(box: str, request: pytest.FixtureRequest) -> None:
    r = run(request.getfixturevalue(box), "import os, tempfile\nprint(sorted(os.environ), os.environ['HOME'] == tempfile.gettempdir())")
    expected = ["HOME", "LANG", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PATH", "PYTHONHASHSEED", "TMPDIR"]
    assert r.stdout == f"{expected} True\n"


def test_numpy_starts_within_the_limits(sb: Sandbox) -> None:
    pytest.importorskip("numpy")
    src = "import numpy as np\na = np.ones((300, 300))\nprint(float((a @ a).sum()))"
    assert run(sb, src).stdout == "27000000.0\n"
    assert run(sb, src, Limits(cpu_time=2, memory=256 << 20)).stdout == "27000000.0\n"


# ------------------------------------------------------------------------------------------------ limits


def test_cpu_timeout(sb: Sandbox) -> None:
    r = run(sb, "while True: pass")
    assert r.status == "timeout" and 0.4 < r.cpu_time < 1.6 and r.wall_time < 2.5


def test_wall_timeout_for_sleepers(sb: Sandbox) -> None:
    r = run(sb, "import time\ntime.sleep(60)")
    assert r.status == "timeout" and "wall" in r.detail and r.wall_time < 3


def test_ignoring_sigterm_does_not_help(sb: Sandbox) -> None:
    r = run(sb, "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: pass")
    assert r.status == "timeout"


def test_memory_limit(sb: Sandbox) -> None:
    r = run(sb, "x = []\nwhile True: x.append(bytearray(10**6))", Limits(cpu_time=5, memory=200 << 20))
    assert r.status == "memory_limit" and r.wall_time < 3


def test_memory_shared_by_forks_counts_once(sb: Sandbox) -> None:
    # five processes each map the same 80 MiB: 400 MiB resident in all, far less proportionally
    src = (
        "import os, time\nx = b'x' * (80 << 20)\npids = []\nfor _ in range(4):\n    pids.append(os.fork())\n"
        "    if pids[-1] == 0:\n        time.sleep(0.4)\n        os._exit(0)\nfor p in pids:\n    os.waitpid(p, 0)\n"
        "print('done')"
    )
    r = run(sb, src, Limits(cpu_time=5, memory=256 << 20))
    assert (r.status, r.stdout) == ("exited", "done\n"), r


def test_a_process_gone_before_its_memory_is_read_counts_nothing() -> None:
    # seen through its stat with 400 MiB resident, ended before its smaps_rollup is read: none of it is held now
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert accounting.proportional_memory(child.pid, 100_000) == 0
    assert accounting.proportional_memory(os.getpid(), 1) > 1 << 20  # a live process: its own proportional memory


def test_huge_single_allocation_fails_fast(sb: Sandbox) -> None:
    r = run(sb, "x = b'x' * (64 << 30)", Limits(cpu_time=5, memory=200 << 20))
    assert r.exit_code == 1 and "MemoryError" in r.stderr


@pytest.mark.parametrize("stream", ["sys.stdout", "sys.stderr"])
def test_output_flood(sb: Sandbox, stream: str) -> None:
    r = run(sb, f"import sys\nwhile True: {stream}.write('x' * 4096)", Limits(cpu_time=5, output=1 << 20))
    assert r.status == "output_limit" and r.wall_time < 3 and len(r.stdout) + len(r.stderr) <= 1 << 17


def test_report_flood(sb: Sandbox) -> None:
    r = run(sb, "import os\nwhile True: os.write(3, b'x' * 4096)", Limits(cpu_time=5, output=1 << 20))
    assert r.status == "output_limit" and len(r.report) <= (1 << 20) + (1 << 16)


def test_file_size_limit(sb: Sandbox) -> None:
    r = run(
        sb,
        "with open('big', 'wb') as f:\n    f.write(b'x' * (64 << 20))",
        Limits(cpu_time=2, file_size=1 << 20),
    )
    assert r.status != "exited" or r.exit_code != 0


# ------------------------------------------------------------------------------------------------ hostile programs

FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
DAEMON = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
print("parent done")
"""
KILLER = """
import os, signal
for target in (os.getppid(), 1, -1, 0):
    try:
        os.kill(target, signal.SIGKILL)
    except OSError:
        pass
"""


def test_fork_bomb_costs_only_its_run(sb: Sandbox) -> None:
    r = run(sb, FORK_BOMB, Limits(cpu_time=0.5, wall_time=1.5))
    assert r.status == "timeout"
    assert not wait_until_idle(sb)
    assert run(sb, "print(1)").stdout == "1\n"


def test_setsid_daemons_die_with_the_program(sb: Sandbox) -> None:
    r = run(sb, DAEMON)
    assert r.stdout == "parent done\n" and r.wall_time < 1.5  # nobody waits for the daemon's pipes
    assert not wait_until_idle(sb)
    if sb.isolation.separate_uid:
        assert not processes_of_sandbox_uids()


def test_killing_parents_or_everything_costs_only_its_run(sb: Sandbox) -> None:
    r = run(sb, KILLER)
    assert r.status == "exited"
    assert [run(sb, f"print({i})").stdout for i in range(4)] == [f"{i}\n" for i in range(4)]


def test_no_two_servers_share_a_program_uid(sb: Sandbox) -> None:
    """Two sandboxes at once (two scorers, or one per training process): their programs never share a uid, so
    neither the process limit nor a clean-up nor a program's kill(-1) reaches the other's programs."""
    if not sb.isolation.separate_uid:
        pytest.skip("programs get a uid of their own only as root")
    uid = Program("import os, time\ntime.sleep(0.3)\nprint(os.getuid())")  # slow: both workers take one
    with Sandbox(workers=2) as other:
        ours, theirs = ({int(r.stdout) for r in box.map([uid] * 4)} for box in (sb, other))
    assert len(ours) == len(theirs) == 2 and not ours & theirs
    assert all(sandbox.UID_BASE <= u < sandbox.UID_BASE + sandbox.UID_COUNT for u in ours | theirs)


def test_no_network(sb: Sandbox) -> None:
    if not sb.isolation.network_namespace:
        pytest.skip("no network namespace on this machine")
    src = """
    import socket
    for address in [("1.1.1.1", 53), ("127.0.0.1", 22)]:
        try:
            socket.create_connection(address, timeout=1)
            print("connected", address)
        except OSError as e:
            print("refused")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        socket.create_connection(server.getsockname(), timeout=1)
        print("talked to itself")
    except OSError:
        print("no loopback")
    """
    assert run(sb, src).stdout == "refused\nrefused\nno loopback\n"


def test_writes_stay_in_a_private_tmp(sb: Sandbox, tmp_path: Path) -> None:
    name = f"qrl-test-{uuid.uuid4().hex}"
    targets = [str(ROOT / name), f"/etc/{name}", f"/var/tmp/{name}", str(tmp_path / name), f"/root/{name}"]
    src = f"""
    import os
    for path in {targets!r}:
        try:
            open(path, "w").write("x")
            print("wrote", path)
        except OSError:
            pass
    open("/tmp/{name}", "w").write("mine")
    open("{name}", "w").write("cwd")
    print(os.listdir("/tmp") if os.getcwd() == "/tmp" else "fallback")
    """
    r = run(sb, src)
    assert "wrote" not in r.stdout and r.exit_code == 0
    for target in targets + [f"/tmp/{name}"]:
        assert not os.path.exists(target)
    later = run(sb, f"import os\nprint(os.path.exists('/tmp/{name}'), os.path.exists('{name}'))")
    assert later.stdout == "False False\n"  # nothing is left for the next program either


def test_mixed_batch(sb: Sandbox) -> None:
    good = [Program(f"print({i} * 2)", limits=FAST) for i in range(6)]
    hostile = [
        Program(FORK_BOMB, limits=Limits(cpu_time=0.5, wall_time=1.5)),
        Program("while True: print('x' * 1000)", limits=FAST),
        Program(
            "x = []\nwhile True: x.append(bytearray(10**6))", limits=Limits(cpu_time=3, memory=200 << 20)
        ),
        Program(DAEMON, limits=FAST),
        Program(KILLER, limits=FAST),
        Program("import time\ntime.sleep(30)", limits=FAST),
        Program("input()", limits=FAST),
    ]
    batch = [p for pair in zip(good, hostile, strict=False) for p in pair] + good[len(hostile) :]
    results = sb.map(batch)
    outcomes = {id(p): r for p, r in zip(batch, results, strict=True)}
    assert [(outcomes[id(p)].status, outcomes[id(p)].stdout) for p in good] == [
        ("exited", f"{i * 2}\n") for i in range(6)
    ]
    assert [outcomes[id(p)].status for p in hostile[:3]] == ["timeout", "output_limit", "memory_limit"]
    assert not wait_until_idle(sb)


def test_a_dead_server_is_replaced_and_the_run_retried(sb: Sandbox) -> None:
    future = sb.submit(Program("import time\ntime.sleep(0.5)\nprint('ok')", limits=FAST))
    time.sleep(0.2)
    for worker in sb._workers:
        if worker.proc is not None:
            os.kill(worker.proc.pid, signal.SIGKILL)
    assert future.result().stdout == "ok\n"
    assert run(sb, "print(2)").stdout == "2\n"


def test_async_and_threads(sb: Sandbox) -> None:
    async def several() -> list[RunResult]:
        return await asyncio.gather(*(sb.arun(Program(f"print({i})")) for i in range(5)))

    assert [r.stdout for r in asyncio.run(several())] == [f"{i}\n" for i in range(5)]
    outputs: list[str] = []
    threads = [
        threading.Thread(target=lambda i=i: outputs.append(run(sb, f"print({i})").stdout)) for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outputs) == [f"{i}\n" for i in range(4)]


def test_closed_sandbox_refuses_work() -> None:
    box = Sandbox(workers=1)
    box.close()
    with pytest.raises(SandboxError):
        box.submit(Program("pass"))


def test_server_that_cannot_start_is_an_error(sb: Sandbox) -> None:
    if not sb.isolation.mount_namespace:
        pytest.skip("needs a mount namespace to fail a mount")
    with pytest.raises(SandboxError, match="did not start"):
        Sandbox(workers=1, tmp_size=-1)


# ------------------------------------------------------------------------------------------------ degraded modes


def test_without_namespaces_programs_still_end_and_clean_up(plain: Sandbox) -> None:
    assert not plain.isolation.pid_namespace and not plain.isolation.mount_namespace
    assert run(plain, "print(1)").stdout == "1\n"
    assert run(plain, "while True: pass").status == "timeout"
    name = f"qrl-test-{uuid.uuid4().hex}"
    r = run(plain, DAEMON + f"\nopen('/var/tmp/{name}', 'w').write('x')\nopen('{name}', 'w').write('x')")
    assert r.stdout == "parent done\n"
    assert not wait_until_idle(plain)
    assert not os.path.exists(f"/var/tmp/{name}")
    assert (
        not [p for p in os.listdir("/tmp") if p.startswith("qrl-sandbox-")] or True
    )  # others' runs may be live
    assert run(plain, FORK_BOMB, Limits(cpu_time=0.5, wall_time=1.5)).status == "timeout"
    assert not wait_until_idle(plain)


UNPRIVILEGED = """
import json, sys
sys.path.insert(0, {root!r})
from qrl.execution.sandbox import Limits, Program, Sandbox
with Sandbox(workers=1) as box:
    runs = [box.run(Program(src, limits=Limits(cpu_time=0.5, wall_time=2))) for src in {sources!r}]
    print(json.dumps({{"isolation": box.isolation.describe(), "uid": box.isolation.user_namespace,
                      "runs": [[r.status, r.stdout] for r in runs]}}))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root to become another user"
)
def test_as_an_unprivileged_user() -> None:
    """As nobody: user namespaces stand in for root (where the kernel permits them)."""
    sources = [
        "print(6 * 7)",
        "while True: pass",
        DAEMON,
        "import socket\nsocket.create_connection(('1.1.1.1', 53))",
    ]
    script = shlex.quote(UNPRIVILEGED.format(root=str(ROOT), sources=sources))
    # Python may live under a folder closed to others (here /root): open just that path, in a private mount ns.
    prefix = Path(sys.base_prefix).resolve()
    blocked = next((p for p in reversed(prefix.parents) if not p.stat().st_mode & 0o001), None)
    opening = ""
    if blocked is not None:
        inner = prefix.relative_to(blocked).parts[0]
        opening = (f"mount -t tmpfs tmpfs /mnt && mkdir /mnt/keep && mount --bind {blocked}/{inner} /mnt/keep && "
                   f"mount -t tmpfs -o mode=0755 tmpfs {blocked} && mkdir {blocked}/{inner} && "
                   f"mount --move /mnt/keep {blocked}/{inner} && ")  # fmt: skip
    command = f"{opening}exec setpriv --reuid=65534 --regid=65534 --clear-groups {sys.executable} -c {script}"
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", command],
                          check=False, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    statuses = [status for status, _ in report["runs"]]
    assert report["runs"][0] == ["exited", "42\n"] and statuses[1] == "timeout"
    assert report["runs"][2] == ["exited", "parent done\n"]
    if report["uid"]:  # a user namespace held: the same isolation as root, without a uid of its own
        assert statuses[3] == "exited" and "user namespace" in report["isolation"][0]
