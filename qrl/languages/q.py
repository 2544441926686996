"""Q (kdb+): the problem formats, the executor that runs q programs in the sandbox, and finding the q interpreter.

Three forms of Q problem load through ``problems.load_problems`` (docs/q.md has the details):

- ``msml``: Morgan Stanley's MSML layout, one folder per problem: ``problem_description.txt``, test scripts
  ``q_test_case_N.q`` ending in ``result:solve[...]; show result;``, expected outputs ``q_exact_ans_test_case_N.txt``
  and an optional reference ``q_solution.q``. A test passes when the text ``show result`` prints matches the expected
  output after normalising whitespace; the comparison happens here, in the caller: the expected text never enters
  the sandbox.
- ``q-expr``: JSONL ``{"task_id", "language": "q", "prompt", "tests": [{"expr", "expected"}]}``; each expression's
  value must match (q's ``~``) the expected q value, compared inside q.
- ``q-humaneval``: KX's q-evaluation-harness Q-HumanEval JSONL (``prompt``, ``tests`` as a Python
  ``check(candidate)``, ``entry_point``, ``test_setup_code``); the candidate is the q function loaded into PyKX and
  called from Python, so it needs PyKX able to run q (a licensed PyKX).

How a q test runs (one sandbox program per MSML test script, one per q-expr problem; all in parallel): the sandboxed
Python side (``sandbox_main``, trusted) writes the program to ``qrl_program.q`` and starts a fresh ``q`` on a script
that loads it, evaluates the test and saves the value with ``set``. When that q process has ended, and every process
it left behind has been killed, a second fresh q process, which runs no code of the program, reads the saved value
back and prints it with ``show`` (MSML) or matches it with the expected value (q-expr) between markers; only that
text reaches the caller, over the sandbox's report channel. So whatever the program prints, or however it exits, it
cannot stand in for ``show result``: its only way to a verdict is the value it leaves, as if ``solve`` returned it.

No torch here: the scorer's command line imports this module (through problems.py).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qrl.data.records import DataError, Record, UserError, read_text, require_fields
from qrl.execution import harness
from qrl.execution.sandbox import UID_BASE, UID_COUNT
from qrl.problems import core as problems
from qrl.problems.core import Job, Problem, Submission, Verdict

Q_NOT_FOUND = "q interpreter not found: install kdb+ and put q on PATH, or pass --q_binary"
PROGRAM_FILE = "qrl_program.q"  # the program under test, in the sandbox's working folder
MAIN_FILE = "qrl_main.q"  # loads the program, runs the test, saves the value
RESULT_FILE = "qrl_result"  # MSML: the value of `result`, as `set` writes it
BEGIN, END = "qrl-judge-begin", "qrl-judge-end"  # around the judge process's answer (it runs no program code)
LIMIT_STATUSES = problems.LIMIT_STATUSES


# ----------------------------------------------------------------------------------------------------------------
# Tests of Q problems.


@dataclass(frozen=True)
class ScriptTest:
    """MSML: ``script`` (which ends in ``show result``) must make ``show result`` print ``expected``."""

    script: str
    expected: str
    name: str = ""  # the test script's file name

    @property
    def prefix(self) -> str:
        """The script without its final ``show result``: what runs in the program's q process."""
        return _SHOW_RESULT.sub("", self.script.rstrip())


@dataclass(frozen=True)
class ExprTest:
    """q-expr: the value of ``expr`` must match (``~``) the q value ``expected``."""

    expr: str
    expected: str


_SHOW_RESULT = re.compile(r"\bshow\s+result\s*;?\s*$")


def normalise_output(text: str) -> str:
    """Console text as compared: line ends unified, trailing spaces of each line and blank lines around dropped."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


# ----------------------------------------------------------------------------------------------------------------
# Formats.


def load_msml(root: Path) -> list[Problem] | None:
    """Every problem folder (one holding ``problem_description.txt``) under ``root``; None if there is none."""
    folders = sorted({p.parent for p in root.rglob("problem_description.txt")})
    if not folders:
        return None
    return [_msml_problem(folder) for folder in folders]


_MSML_TEST = re.compile(r"q_test_case_(\d+)\.q")
_MSML_ANSWER = re.compile(r"q_exact_ans_test_case_(\d+)\.txt")
_SPLITS = {"train": "train", "eval": "eval", "test": "eval", "valid": "eval", "validation": "eval"}


def _msml_problem(folder: Path) -> Problem:
    scripts = {int(m[1]): p for p in folder.iterdir() if (m := _MSML_TEST.fullmatch(p.name))}
    answers = {int(m[1]): p for p in folder.iterdir() if (m := _MSML_ANSWER.fullmatch(p.name))}
    if not scripts:
        raise DataError(f"{folder}: no test scripts (q_test_case_N.q)")
    for n in sorted(set(scripts) ^ set(answers)):
        missing = f"q_exact_ans_test_case_{n}.txt" if n in scripts else f"q_test_case_{n}.q"
        raise DataError(f"{folder}: {missing} is missing (every test script needs its expected output)")
    tests = []
    for n in sorted(scripts):
        script = read_text(scripts[n])
        if not _SHOW_RESULT.search(script.rstrip()):
            raise DataError(f"{scripts[n]}: a test script must end in `show result;` (the MSML layout)")
        tests.append(ScriptTest(script, read_text(answers[n]), scripts[n].name))
    description = read_text(folder / "problem_description.txt")
    if not description.strip():
        raise DataError(f"{folder / 'problem_description.txt'}: empty")
    solution = folder / "q_solution.q"
    split = next((_SPLITS[p.name.lower()] for p in folder.parents if p.name.lower() in _SPLITS), None)
    return Problem(
        task_id=f"q/{folder.name}",
        prompt=description.strip(),
        tests=tuple(tests),  # type: ignore[arg-type] -- a Q test, run by the Q executor
        language="q",
        entry_point="solve",
        reference=read_text(solution) if solution.is_file() else None,
        split=split,
        source_format="msml",
        where=str(folder),
    )


def detect(data: dict) -> str | None:
    tests = data.get("tests")
    if isinstance(tests, str) and "entry_point" in data:
        return "q-humaneval"
    if isinstance(tests, list) and (
        data.get("language") == "q" or any(isinstance(t, dict) and "expr" in t for t in tests)
    ):
        return "q-expr"
    return None


_CALLED = re.compile(r"\s*([.A-Za-z][.\w]*)\s*\[")


def parse_q_expr(record: Record) -> Problem:
    require_fields(record, ("task_id", "prompt", "tests"))
    tests = record.data["tests"]
    if not isinstance(tests, list) or not tests:
        raise DataError(f"{record.where}: 'tests' must be a non-empty list")
    parsed = []
    for i, test in enumerate(tests):
        fields = ("expr", "expected")
        ok = isinstance(test, dict) and all(isinstance(test.get(k), str) and test[k].strip() for k in fields)
        if not ok:
            raise DataError(f"{record.where}: tests[{i}] must be an object with 'expr' and 'expected', both q text")
        parsed.append(ExprTest(test["expr"].strip(), test["expected"].strip()))
    entry_point = record.data.get("entry_point") or (m[1] if (m := _CALLED.match(parsed[0].expr)) else None)
    reference = record.data.get("reference_solution")
    return Problem(
        task_id=str(record.data["task_id"]),
        prompt=_text(record, "prompt"),
        tests=tuple(parsed),  # type: ignore[arg-type]
        language="q",
        entry_point=entry_point,
        reference=reference if isinstance(reference, str) and reference.strip() else None,
        source_format="q-expr",
        where=record.where,
        **problems._metadata(record),
    )


def parse_q_humaneval(record: Record) -> Problem:
    """KX's Q-HumanEval: the Python ``check(candidate)`` becomes one test per assert, as for HumanEval; the expected
    literals are normalised as the results will be (tuples as lists, bytes as text)."""
    require_fields(record, ("task_id", "prompt", "tests", "entry_point"))
    data = record.data
    setup = data.get("test_setup_code") or ""
    if not isinstance(setup, str):
        raise DataError(f"{record.where}: 'test_setup_code' must be Python code (a string)")
    view = Record({"task_id": data["task_id"], "prompt": data["prompt"], "test": data["tests"],
                   "entry_point": data["entry_point"]}, record.where)  # fmt: skip
    base = problems._parse_humaneval(view)
    script = (setup.rstrip() + "\n" if setup.strip() else "") + base.test_script
    names = problems._free_names(ast.parse(script)) - {base.entry_point}
    tests = tuple(
        problems.AssertTest(t.text, q_plain(t.expected)) if t.compared_here else t
        for t in base.tests
        if isinstance(t, problems.AssertTest)
    )
    solution = data.get("canonical_solution")
    return dataclasses.replace(
        base,
        tests=tests,
        language="q",
        reference=solution if isinstance(solution, str) and solution.strip() else None,
        setup=setup,
        completion_joins_prompt=False,  # the prompt is a skeleton with an empty body: the answer is the definition
        source_format="q-humaneval",
        test_script=script,
        test_names=tuple(sorted(names)),
        tests_in_process=all(t.compared_here for t in tests),
    )


def _text(record: Record, name: str) -> str:
    value = record.data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{record.where}: '{name}' must be a non-empty string")
    return value


def q_plain(value: Any) -> Any:
    """A value as Q-HumanEval compares it: q strings arrive as bytes and q lists as lists, so tuples become lists and
    bytes become text (UTF-8) on both sides."""
    if type(value) is bytes:
        return value.decode("utf-8", errors="replace")
    if type(value) in (list, tuple):
        return [q_plain(v) for v in value]
    if type(value) is dict:
        return {q_plain(k): q_plain(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------------------------------------------
# Code in answers: ```q, ```k, ```kdb fences are known to problems.extract_code; without fences, the definitions.

_DEFINITION = re.compile(r"^\s*[.A-Za-z][.\w]*\s*:\s*[-{(\[`\"0-9]")
_COMMENT = re.compile(r"^\s*/")


def strip_prose(text: str, entry_point: str | None) -> str:
    """The q code in an answer without fences: the entry point's definition (with the definitions and comments right
    before it, and its indented or unfinished continuation lines), and the definitions right after it."""
    lines = text.splitlines()
    pattern = re.compile(rf"^\s*{re.escape(entry_point)}\s*:" if entry_point else _DEFINITION.pattern)
    start = next((i for i, line in enumerate(lines) if pattern.match(line)), None)
    if start is None:
        inline = re.search(rf"(?<![.\w]){re.escape(entry_point)}\s*:\s*\{{", text) if entry_point else None
        if inline is None:
            return text.strip()
        end = _closing(text, text.index("{", inline.start()))  # "Here it is: solve:{...}, which ..."
        if end is not None:
            return text[inline.start() : end].strip() + "\n"
        lines, start = text[inline.start() :].splitlines(), 0
    first = start
    while first > 0 and (_DEFINITION.match(lines[first - 1]) or _COMMENT.match(lines[first - 1])):
        first -= 1
    end, depth = start, 0
    while end < len(lines):
        line = lines[end]
        continuation = depth > 0 or (end > start and line[:1].isspace() and line.strip())
        if end > start and not continuation and not (_DEFINITION.match(line) or _COMMENT.match(line)):
            break
        depth = max(0, depth + _depth_change(line))
        end += 1
    code = lines[first:end]
    code[start - first] = code[start - first].rstrip()
    return "\n".join(code).rstrip() + "\n"


def _brackets(text: str, start: int = 0, comments: bool = False):
    """(index, +1 or -1) for each bracket from ``start`` outside strings; with ``comments``, none after a ``/``
    comment (a slash at the start of the text or after a space)."""
    in_string, i = False, start
    while i < len(text):
        c = text[i]
        if in_string:
            if c == "\\":
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif comments and c == "/" and (i == 0 or text[i - 1].isspace()):
            return
        elif c in "{[(":
            yield i, 1
        elif c in "}])":
            yield i, -1
        i += 1


def _closing(text: str, opening: int) -> int | None:
    """Where the bracket at ``opening`` is closed (the index after it), outside strings; None if it is not."""
    depth = 0
    for i, step in _brackets(text, opening):
        depth += step
        if depth == 0:
            return i + 1
    return None


def _depth_change(line: str) -> int:
    """Open minus closed brackets on a line, outside strings and comments."""
    return sum(step for _, step in _brackets(line, comments=True))


# ----------------------------------------------------------------------------------------------------------------
# Finding q.


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


def _check_reachable(install: QInstall) -> None:
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


# ----------------------------------------------------------------------------------------------------------------
# PyKX, for Q-HumanEval.

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
    probe = ("import sys\nsys.path.insert(0, sys.argv[1])\nimport pykx\n"
             "ok = bool(getattr(pykx, 'licensed', False))\n"
             "ok = ok and int(pykx.q('1+1').py()) == 2\n"
             "sys.stdout.write('qrl-licensed' if ok else 'qrl-unlicensed')\n")  # fmt: skip
    env = {**os.environ, **pykx_env()}
    try:
        done = subprocess.run([sys.executable, "-c", probe, folder], stdin=subprocess.DEVNULL, capture_output=True,
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


# ----------------------------------------------------------------------------------------------------------------
# The q scripts. Only these statements are what the stand-in of the tests (tests/q_standin.py) has to understand.


def q_string(text: str) -> str:
    """A q string (char vector) literal for ``text``. One character in quotes is a char atom in q, not a string,
    so that one is enlisted."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = []
    for c in text:
        if c in escapes:
            out.append(escapes[c])
        elif ord(c) < 32 or ord(c) == 127:
            out.append(f"\\{ord(c):03o}")
        else:
            out.append(c)
    literal = '"' + "".join(out) + '"'
    return f"(enlist {literal})" if len(text) == 1 else literal


def main_script(test: ScriptTest | None = None, exprs: Sequence[str] = ()) -> str:
    """The program's q process: load the program, back to the root namespace, then the MSML test (its value saved
    as ``qrl_result``) or each expression, trapped (its value saved as ``qrl_r<i>``, an error as ``qrl_e<i>``)."""
    lines = [f"\\l {PROGRAM_FILE}", "\\d ."]
    if test is not None:
        lines += [test.prefix.rstrip(), f"`:{RESULT_FILE} set result"]
    for i, expr in enumerate(exprs):
        lines.append(f"@[{{`:qrl_r{i} set value x}};{q_string(expr)};{{`:qrl_e{i} 0: enlist x}}]")
    return "\n".join([*lines, "exit 0", ""])


def show_script(have_result: bool = True) -> str:
    """The judge process for MSML: print the saved value with ``show``, between markers. It runs even when there is
    no value, as a check that q itself runs in the sandbox (no first marker: q is broken here, not the program)."""
    lines = [f'-1 "{BEGIN}";', *([f"show get `:{RESULT_FILE};"] if have_result else []), f'-1 "{END}";']
    return "\n".join([*lines, "exit 0", ""])


def match_script(checks: Sequence[tuple[int, str]]) -> str:
    """The judge process for q-expr: for test i, whether the saved value matches the expected q value (it runs, as
    a check that q runs, even when there is nothing to compare)."""
    lines = [f'-1 "{BEGIN}";']
    for i, expected in checks:
        lines.append(f'-1 "qrl {i} ",@[{{$[(get x 0)~value x 1;"pass";"fail"]}};(`:qrl_r{i};{q_string(expected)});'
                     '{"error ",x}];')  # fmt: skip
    return "\n".join([*lines, f'-1 "{END}";', "exit 0", ""])


def between_markers(text: str) -> tuple[bool, str | None]:
    """(whether the judge started, the text between its markers, None if it stopped before the second)."""
    lines = text.replace("\r\n", "\n").split("\n")
    if BEGIN not in lines:
        return False, None
    rest = lines[lines.index(BEGIN) + 1 :]
    return True, "\n".join(rest[: rest.index(END)]) if END in rest else None


# ----------------------------------------------------------------------------------------------------------------
# The executor.


class QExecutor:
    """Runs Q problems: MSML and q-expr through the q binary in the sandbox, Q-HumanEval through PyKX (as Python
    programs under harness.py, whose verdict logic it shares)."""

    preload = ("qrl.languages.q",)
    harness_source = "from qrl.languages import q\nq.sandbox_main()\n"

    def __init__(self) -> None:
        self.q_binary: str | None = None
        self._checked: set[QInstall | str] = set()
        self._found: dict[tuple, QInstall] = {}

    def configure(self, q_binary: str | None = None, **_options: Any) -> None:
        self.q_binary = q_binary or None

    def install(self) -> QInstall:
        """The q to run (UserError if there is none), looked up again only when the option or environment changes."""
        key = (self.q_binary, *(os.environ.get(k) for k in ("PATH", "QHOME", "QLIC", "HOME")))
        if key not in self._found:
            self._found = {key: find_q(self.q_binary)}
        return self._found[key]

    def sandbox_paths(self) -> list[str]:
        folders: set[str] = set()
        try:
            folders.update(self.install().folders())
        except UserError:
            pass  # no q here: only a Q problem needs it, and check() says so at start
        pykx = pykx_folder()
        if pykx:
            folders.add(pykx)
        return sorted(folders)

    def check(self, problems_: Sequence[Problem]) -> None:
        if any(p.source_format != "q-humaneval" for p in problems_):
            install = self.install()
            if install not in self._checked:  # once per interpreter and QHOME/QLIC
                _check_reachable(install)
                smoke_test(install)
                self._checked.add(install)
        if any(p.source_format == "q-humaneval" for p in problems_) and "pykx" not in self._checked:
            check_pykx()
            self._checked.add("pykx")

    def prepare(self, problem: Problem, code: str, reply_limit: int) -> Submission:
        code = "\n".join(line.rstrip() for line in code.strip("\n").splitlines()).strip()
        key = f"{problem.task_id}\0{code}"
        if not code:
            return Submission(problem, code, key, (), syntax_error="no q code in the answer")
        if problem.source_format == "q-humaneval":
            program = pykx_program(code + "\n", problem.entry_point or "")
            return dataclasses.replace(problems.PythonExecutor().prepare(problem, program, reply_limit), key=key)
        install = self.install()
        public = {"q": install.binary, "env": install.env(), "program": code + "\n", "reply_limit": reply_limit}
        if all(isinstance(t, ScriptTest) for t in problem.tests):
            jobs = tuple(
                Job(self.harness_source, harness.encode_parts({**public, "main": main_script(test=t)}, {}))
                for t in problem.tests
                if isinstance(t, ScriptTest)
            )
            return Submission(problem, code, key, jobs)
        if all(isinstance(t, ExprTest) for t in problem.tests):
            exprs = [t.expr for t in problem.tests if isinstance(t, ExprTest)]
            public = {**public, "main": main_script(exprs=exprs), "tests": len(exprs)}
            private = {"expected": [t.expected for t in problem.tests if isinstance(t, ExprTest)]}
            return Submission(problem, code, key, (Job(self.harness_source, harness.encode_parts(public, private)),))
        raise UserError(f"{problem.where}: Q problems take MSML test scripts or q expressions ('expr', 'expected') as "
                        "tests")  # fmt: skip

    def judge(self, submission: Submission, outcomes: Sequence[problems.RunOutcome]) -> Verdict:
        problem = submission.problem
        if problem.source_format == "q-humaneval":
            return problems.PythonExecutor().judge(submission, outcomes)
        early = problems.early_verdict(submission, outcomes)
        if early is not None:
            return early
        cpu, wall = problems.outcome_times(outcomes)
        if isinstance(problem.tests[0], ScriptTest):
            return _judge_scripts(problem, outcomes, cpu, wall)
        return _judge_exprs(problem, outcomes[0], cpu, wall)


def _judge_scripts(problem: Problem, outcomes: Sequence[problems.RunOutcome], cpu: float, wall: float) -> Verdict:
    total, passed, errors, detail = len(problem.tests), 0, 0, ""
    for i, (test, outcome) in enumerate(zip(problem.tests, outcomes, strict=True)):
        assert isinstance(test, ScriptTest)
        case = test.name or f"case {i}"
        if outcome.status in LIMIT_STATUSES:
            return Verdict(outcome.status, passed, total, cpu, wall, f"{case}: {outcome.detail}")
        events = {e.get("e"): e for e in reversed(problems._events(outcome.report))}  # the first of each kind
        if "infra" in events:
            return Verdict("infra_error", passed, total, cpu, wall, f"{case}: {events['infra'].get('msg')}")
        if "output_limit" in events:
            return Verdict("output_limit", passed, total, cpu, wall, f"{case}: `show result` printed too much")
        if "done" not in events:  # the runner reports even its own failures: something killed it (the program)
            detail = f"{case}: the run ended before the test was done"
            return Verdict("runtime_error", passed, total, cpu, wall, detail)
        shown = events.get("shown", {}).get("text")
        if not isinstance(shown, str):
            errors += 1
            detail = detail or f"{case}: {_no_value(events, outcome)}"
        elif normalise_output(shown) == normalise_output(test.expected):
            passed += 1
        else:
            detail = detail or f"{case}: expected {_clip(test.expected)}, got {_clip(shown)}"
    return problems._decide(passed, total, errors, False, cpu, wall, detail)


def _judge_exprs(problem: Problem, outcome: problems.RunOutcome, cpu: float, wall: float) -> Verdict:
    total = len(problem.tests)
    events = problems._events(outcome.report)
    first = {e.get("e"): e for e in reversed(events)}
    results: dict[int, tuple[str, str]] = {}
    for event in events:
        i = event.get("i")
        if event.get("e") == "test" and type(i) is int and 0 <= i < total and i not in results:
            results[i] = (str(event.get("r")), str(event.get("msg", ""))[:300])
    passed = sum(r == "pass" for r, _ in results.values())
    if outcome.status in LIMIT_STATUSES:
        return Verdict(outcome.status, passed, total, cpu, wall, outcome.detail)
    if "infra" in first:
        return Verdict("infra_error", 0, total, cpu, wall, str(first["infra"].get("msg")))
    if "done" not in first:  # as above: the runner was killed
        return Verdict("runtime_error", passed, total, cpu, wall, "the run ended before the tests were done")
    errors, died, detail = 0, False, ""
    for i, test in enumerate(problem.tests):
        assert isinstance(test, ExprTest)
        verdict, msg = results.get(i, ("missing", ""))
        if verdict == "pass":
            continue
        if verdict == "fail":
            detail = detail or f"test {i}: {test.expr} does not match {test.expected}"
            continue
        errors += 1
        if verdict == "missing":
            died = True
            detail = detail or f"test {i}: not run (the q process ended first){_stderr_tail(outcome)}"
        else:
            detail = detail or f"test {i}: {test.expr}: {msg}"
    return problems._decide(passed, total, errors, died, cpu, wall, detail)


def _no_value(events: dict, outcome: problems.RunOutcome) -> str:
    if "no_result" in events:
        return f"no `result` was saved (q exited with code {events['no_result'].get('code')}){_stderr_tail(outcome)}"
    if "unreadable" in events:
        return f"the saved `result` could not be shown: {events['unreadable'].get('msg')}"
    return "no result"


def _stderr_tail(outcome: problems.RunOutcome) -> str:
    text = str(getattr(outcome, "stderr", "") or "").strip()
    return f": {text[-300:]}" if text else ""


def _clip(text: str, size: int = 120) -> str:
    text = normalise_output(text)
    return repr(text if len(text) <= size else text[: size - 3] + "...")


# ----------------------------------------------------------------------------------------------------------------
# Inside the sandbox: the trusted runner. It is the sandbox's program (pid 1 of the run's pid namespace where there
# is one), not dumpable, and holds the report channel; the q processes get neither that channel nor its stdin.


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


# ----------------------------------------------------------------------------------------------------------------
# Registration: importing this module (problems.py does) makes the Q formats and the executor known.

problems.register_format("msml", load_folder=load_msml)
problems.register_format("q-expr", parse=parse_q_expr, detect=detect)
problems.register_format("q-humaneval", parse=parse_q_humaneval, detect=detect)
problems.register_language("q", tags={"q", "k", "kdb", "kdb+", "q/kdb+"}, strip_prose=strip_prose)
problems.EXECUTORS["q"] = QExecutor()

