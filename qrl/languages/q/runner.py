"""Inside the sandbox: the trusted runner of a q test. It is the sandbox's program (pid 1 of the run's pid namespace
where there is one), not dumpable, and holds the report channel; the q processes get neither that channel nor its
stdin. It starts the program's q process, kills what that left behind, then runs a fresh judge q process on the
saved values."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
from typing import Any

from qrl.execution import harness
from qrl.execution.sandbox import UID_BASE, UID_COUNT
from qrl.languages.q.scripts import MAIN_FILE, PROGRAM_FILE, RESULT_FILE, between_markers, match_script, show_script


def sandbox_main() -> None:
    report = harness.Report(harness.REPORT_FD)
    try:
        harness.set_dumpable(False)  # no process of the same user may read this one's memory or its stdin
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        public = harness.read_part(0)
        _run(public, report)
    except Exception as e:  # noqa: BLE001 -- our own failure: scored as infra_error, never against the program
        report.send(e="infra", msg=harness.describe(e))
    finally:
        report.send(e="done")


def _run(public: dict, report: harness.Report) -> None:
    work = os.getcwd()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", **public["env"]}
    _write_new(os.path.join(work, PROGRAM_FILE), public["program"])
    _write_new(os.path.join(work, MAIN_FILE), public["main"])
    try:  # its output goes straight to the sandbox's (limited) stdout and stderr; it never reaches a verdict
        q = subprocess.Popen([public["q"], MAIN_FILE, "-q"], stdin=subprocess.DEVNULL, env=env, cwd=work,
                             close_fds=True, **_OWN_GROUP)  # fmt: skip
    except OSError as e:
        report.send(e="infra", msg=f"cannot start q ({public['q']}) inside the sandbox: {e.strerror}")
        return
    code = q.wait()
    _kill_the_rest(q.pid)
    private = harness.read_part(0)  # read only now: no process of the program is left to see it
    harness.close_stdin()
    _clear(work, keep=re.compile(r"qrl_result|qrl_[re]\d+"))  # what the program left besides its values: room
    if "tests" in public:
        _judge_expressions(public, private, env, work, report)
        return
    have_result = _regular(os.path.join(work, RESULT_FILE))
    try:
        out = _run_judge(public["q"], show_script(have_result), env, work, public["reply_limit"])
    except _NoRoom as e:
        report.send(e="unreadable", msg=str(e))
        return
    if out is None:
        report.send(e="output_limit")
        return
    started, shown = between_markers(out[0])
    if not started:
        report.send(e="infra", msg=f"q does not run inside the sandbox: {_said(out[1])}")
    elif not have_result:
        report.send(e="no_result", code=code)
    elif shown is None:
        report.send(e="unreadable", msg=_said(out[1]))
    else:
        report.send(e="shown", text=shown)


def _judge_expressions(public: dict, private: dict, env: dict, work: str, report: harness.Report) -> None:
    checks = []
    for i, expected in enumerate(private["expected"][: public["tests"]]):
        if _regular(os.path.join(work, f"qrl_r{i}")):
            checks.append((i, expected))
        elif _regular(os.path.join(work, f"qrl_e{i}")):
            with open(os.path.join(work, f"qrl_e{i}"), "rb") as f:
                message = f.read(300).decode(errors="replace").strip()
            report.send(e="test", i=i, r="error", msg=f"'{message}")
        else:
            report.send(e="test", i=i, r="missing")
    try:
        out = _run_judge(public["q"], match_script(checks), env, work, 1 << 20)
    except _NoRoom as e:
        for i, _ in checks:
            report.send(e="test", i=i, r="error", msg=str(e))
        return
    started, answers = between_markers(out[0]) if out is not None else (True, None)
    if not started:
        report.send(e="infra", msg=f"q does not run inside the sandbox: {_said(out[1] if out else '')}")
        return
    seen: set[int] = set()
    for line in (answers or "").split("\n"):
        m = re.fullmatch(r"qrl (\d+) (pass|fail|error)(?: (.*))?", line)
        if m and int(m[1]) not in seen:
            seen.add(int(m[1]))
            report.send(e="test", i=int(m[1]), r=m[2], msg=(m[3] or "")[:300])
    for i, _ in checks:
        if i not in seen:
            report.send(e="test", i=i, r="error", msg="the value could not be compared")


class _NoRoom(Exception):
    """The saved values fill the working folder: no room for the judge's files (the program's doing)."""


def _run_judge(binary: str, script: str, env: dict, work: str, limit: int) -> tuple[str, str] | None:
    """Run a judge script in a fresh q process (no program code runs in it); its stdout and stderr, or None when it
    printed more than ``limit`` bytes."""
    token = secrets.token_hex(8)  # fresh names: nothing the program left can be in the way
    paths = [os.path.join(work, f"qrl_judge_{token}{suffix}") for suffix in (".q", ".out", ".err")]
    try:
        _write_new(paths[0], script)
    except OSError as e:
        raise _NoRoom(f"no room left for the judge in the working folder ({e.strerror})") from None
    with open(paths[1], "xb") as out, open(paths[2], "xb") as err:
        judge = subprocess.Popen([binary, os.path.basename(paths[0]), "-q"], stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=err, env=env, cwd=work, close_fds=True, **_OWN_GROUP)  # fmt: skip
        judge.wait()
    _kill_the_rest(judge.pid)
    texts = []
    for path in paths[1:]:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            return None
        texts.append(data.decode("utf-8", errors="replace"))
    return texts[0], texts[1]


# each q process leads a process group of its own (not a session: a session costs a scheduler autogroup)
_OWN_GROUP: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


def _said(stderr: str) -> str:
    return (stderr.strip() or "q printed nothing")[-300:]


def _kill_the_rest(group: int) -> None:
    """Kill every process the q process left behind. As pid 1 of the run's pid namespace, that is every other
    process in it; with a uid of its own (root without namespaces), every other process of that uid; otherwise its
    process group (a process that left the group can outlive it here, until the sandbox sweeps after the run)."""
    if os.getpid() == 1 or _uid_of_its_own():
        try:
            os.kill(-1, signal.SIGKILL)  # never the caller itself
        except ProcessLookupError:
            pass
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass


def _uid_of_its_own() -> bool:
    """Whether the sandbox gave this run a uid of its own: dropped from root (the server, its parent, is root) to
    one of the sandbox's uids. Only then may ``kill(-1)`` be used without a pid namespace."""
    if not UID_BASE <= os.getuid() < UID_BASE + UID_COUNT:
        return False
    try:
        with open(f"/proc/{os.getppid()}/status") as f:
            return any(line.split()[1:2] == ["0"] for line in f if line.startswith("Uid:"))
    except OSError:
        return False


def _clear(folder: str, keep: re.Pattern) -> None:
    """Remove what the program left in its working folder, but the saved values: a folder it filled could
    otherwise keep the judge from starting (which would be scored as the sandbox's failure, not the program's)."""
    for entry in os.scandir(folder):
        if keep.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _write_new(path: str, text: str) -> None:
    with open(path, "x", encoding="utf-8") as f:
        f.write(text)
