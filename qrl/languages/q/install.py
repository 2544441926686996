"""Finding the q interpreter (and checking, at start, that it runs as the sandbox will run it), and PyKX, through
which Q-HumanEval answers run: the Python program that stands for such an answer."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from qrl.data.records import UserError

Q_NOT_FOUND = "q interpreter not found: install kdb+ and put q on PATH, or pass --q_binary"

@dataclass(frozen=True)
class QInstall:
    binary: str  # absolute, symlinks resolved
    qhome: str | None  # where q.k (and often the licence) lives
    qlic: str | None  # the licence folder, when QLIC says so

    def env(self) -> dict[str, str]:
        out = {}
        if self.qhome:
            out["QHOME"] = self.qhome
        if self.qlic:
            out["QLIC"] = self.qlic
        return out

    def folders(self) -> list[str]:
        """What q needs to read inside the sandbox: its own folder, QHOME and the licence folder."""
        found = [os.path.dirname(self.binary), self.qhome, self.qlic]
        return sorted({f for f in found if f and os.path.isdir(f)})


def find_q(q_binary: str | None = None, environ: dict[str, str] | None = None) -> QInstall:
    """The q interpreter: ``q_binary`` (a path, or a name looked up on PATH), else ``q`` on PATH. QHOME is taken from
    the environment, else guessed as q's usual layout (``$QHOME/l64/q``), else ``~/q``. Raises UserError."""
    environ = dict(os.environ if environ is None else environ)
    name = q_binary or "q"
    if os.sep in name:
        path = os.path.abspath(os.path.expanduser(name))
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise UserError(f"--q_binary {q_binary}: no executable file there; {Q_NOT_FOUND}")
    else:
        path = shutil.which(name, path=environ.get("PATH", os.defpath))
        if path is None:
            raise UserError(Q_NOT_FOUND if q_binary is None else f"--q_binary {q_binary}: not on PATH; {Q_NOT_FOUND}")
    binary = os.path.realpath(path)
    qhome = environ.get("QHOME")
    if not qhome:
        guesses = [os.path.dirname(os.path.dirname(binary)), os.path.dirname(binary), os.path.expanduser("~/q")]
        qhome = next((g for g in guesses if os.path.isfile(os.path.join(g, "q.k"))), None)
    qlic = environ.get("QLIC") or None
    return QInstall(binary, os.path.abspath(qhome) if qhome else None, os.path.abspath(qlic) if qlic else None)


def check_reachable(install: QInstall) -> None:
    """The programs run as an unprivileged user with a private /tmp: q must be where they can reach it."""
    for what, path in (("q", install.binary), ("QHOME", install.qhome), ("QLIC", install.qlic)):
        for private in ("/tmp", "/dev/shm"):
            if path and (os.path.realpath(path) + os.sep).startswith(os.path.realpath(private) + os.sep):
                raise UserError(f"{what} at {path} lies under {private}, which the sandbox replaces with a private "
                                "folder for each program: install q elsewhere")  # fmt: skip
    if os.geteuid() == 0 and not os.stat(install.binary).st_mode & stat.S_IXOTH:
        raise UserError(f"q at {install.binary} is not executable by other users, as the sandboxed programs are: "
                        f"chmod o+rx {install.binary}")  # fmt: skip


def smoke_test(install: QInstall, timeout: float = 60.0) -> None:
    """Run q once on a two-line script, outside the sandbox but with the environment the sandbox gives it (no HOME to
    fall back on for QHOME); raise UserError with what q said if it does not work: a missing licence, or a q.k it
    cannot find (``show`` comes from q.k), shows here, before any training."""
    with tempfile.TemporaryDirectory(prefix="qrl-q-check-") as folder:
        script = os.path.join(folder, "check.q")
        with open(script, "w", encoding="utf-8") as f:
            f.write('-1 "qrl-ok";\nshow 1 2 3;\nexit 0\n')
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8",
               **install.env()}  # fmt: skip
        try:
            done = subprocess.run([install.binary, script, "-q"], stdin=subprocess.DEVNULL, capture_output=True,
                                  env=env, cwd=folder, timeout=timeout, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise UserError(f"q at {install.binary} did not finish a two-line script in {timeout:g}s") from None
        except OSError as e:
            raise UserError(f"q at {install.binary} does not start: {e.strerror}") from None
    lines = [line.strip() for line in done.stdout.decode(errors="replace").splitlines()]
    if not any(lines[i : i + 2] == ["qrl-ok", "1 2 3"] for i in range(len(lines))):
        said = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        raise UserError(f"q at {install.binary} does not run a two-line script (exit code {done.returncode}): "
                        f"{said[0][:200] if said else 'no output'}")  # fmt: skip



_PYKX_ENV = re.compile(r"^(QHOME|QLIC|QARGS|KDB_LICENSE_B64|KDB_K4LICENSE_B64|PYKX_\w+)$")
PYKX_MISSING = ("Q-HumanEval problems run through PyKX, which is not installed: pip install pykx, with a kdb+ licence "
                "for it (QLIC or QHOME)")  # fmt: skip
PYKX_UNLICENSED = ("Q-HumanEval problems run through PyKX, which is in unlicensed mode here and cannot execute q: "
                   "give it a kdb+ licence (kc.lic or k4.lic in QLIC or QHOME, or KDB_LICENSE_B64)")  # fmt: skip


def pykx_env() -> dict[str, str]:
    """The environment PyKX reads (licence, QHOME, its own settings): the same for the check and the programs."""
    return {k: v for k, v in os.environ.items() if _PYKX_ENV.match(k)}


def pykx_folder() -> str | None:
    """The folder PyKX is installed in (the one holding the ``pykx`` package), without importing it."""
    try:
        spec = importlib.util.find_spec("pykx")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.dirname(os.path.abspath(next(iter(spec.submodule_search_locations))))


def check_pykx(timeout: float = 180.0) -> None:
    """Raise UserError unless PyKX is installed and licensed (able to execute q). Checked in a child process:
    importing PyKX loads q into the process, which the trainer does not need."""
    folder = pykx_folder()
    if folder is None:
        raise UserError(PYKX_MISSING)
    probe = ("import sys\nimport pykx\n"
             "ok = bool(getattr(pykx, 'licensed', False))\n"
             "ok = ok and int(pykx.q('1+1').py()) == 2\n"
             "sys.stdout.write('qrl-licensed' if ok else 'qrl-unlicensed')\n")  # fmt: skip
    path = os.pathsep.join(p for p in (folder, os.environ.get("PYTHONPATH", "")) if p)  # PyKX's own folder first
    env = {**os.environ, **pykx_env(), "PYTHONPATH": path}
    try:
        done = subprocess.run([sys.executable, "-c", probe], stdin=subprocess.DEVNULL, capture_output=True,
                              env=env, timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise UserError(f"Q-HumanEval problems run through PyKX, which did not start in {timeout:g}s") from None
    out = done.stdout.decode(errors="replace")
    if "qrl-licensed" in out:
        return
    if "qrl-unlicensed" in out or b"LicenseException" in done.stderr:
        raise UserError(PYKX_UNLICENSED)
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    raise UserError(f"Q-HumanEval problems run through PyKX, which fails to start: {lines[-1][:200] if lines else '?'}")


_PYKX_PROGRAM = '''\
# The candidate for a Q-HumanEval problem: q code loaded into PyKX, called from Python as KX's harness does.
import os as _os
import sys as _sys

_sys.path[:0] = {paths!r}
_os.environ.update({env!r})
import pykx as _kx

_file = _os.path.join(_os.getcwd(), "qrl_candidate.q")
with open(_file, "w", encoding="utf-8") as _out:
    _out.write({code!r})
_kx.q('{{system "l ",x}}', _file.encode())
_function = _kx.q({entry_point!r})


def _to_q(value):
    # as KX's harness: Python strings go to q as strings (char vectors), not symbols
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (list, tuple)):
        return type(value)(_to_q(v) for v in value)
    if isinstance(value, dict):
        return {{_to_q(k): _to_q(v) for k, v in value.items()}}
    return value


def _plain(value):
    if hasattr(value, "tolist") and type(value).__module__.split(".")[0] == "numpy":
        value = value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {{_plain(k): _plain(v) for k, v in value.items()}}
    return value


def {entry_point}(*args):
    result = _function(*[_to_q(a) for a in args])
    return _plain(result.py() if hasattr(result, "py") else result)
'''


def pykx_program(code: str, entry_point: str) -> str:
    """The Python program that stands for a Q-HumanEval answer: it loads the q code into PyKX and defines
    ``entry_point`` as a Python function calling the q one."""
    folder = pykx_folder()
    return _PYKX_PROGRAM.format(paths=[folder] if folder else [], env=pykx_env(), code=code, entry_point=entry_point)
