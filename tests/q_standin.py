"""STAND-INS for the q interpreter and for PyKX, which this machine cannot have. They are NOT q implementations.

``build_q_standin(folder)`` writes ``fake_q_STANDIN``: a small Python script that keeps only the part of the q
command line's contract that qrl.languages.q relies on, and understands only the statements the tests write:

- ``fake_q_STANDIN script.q -q``: runs the script file, then reads commands from stdin until end of input (as q
  does); ``exit n`` and ``\\\\`` end it; an error prints ``'msg`` on stderr and abandons the script (as q does when
  loading a script); with QHOME set, ``$QHOME/q.k`` must be readable, as q needs it at start;
- ``\\l file``, ``\\d .``, ``name:value``, ``name:{...}`` (only the function bodies in ``BODIES`` below can be
  called), ``f[a;b]``, ``show x``, ``-1 "text"``, ``\\`:file set x``, ``get \\`:file``, ``value "expr"``, ``~``;
- the exact statements qrl.languages.q.main_script/show_script/match_script generate (the trap ``@[...]`` lines);
- literals: longs (``1``, ``1 2 3``, ``-4``), floats (``1.5``), booleans (``1b``, ``101b``), chars and strings,
  symbols (``\\`a``, ``\\`a\\`b``), and lists ``(a;b;c)``.

``show`` prints as q does for those types. ``set`` writes the stand-in's own JSON, not q's binary format.

``build_pykx_standin(folder)`` writes a package ``pykx`` with ``licensed`` and ``q(...)`` answering exactly the calls
qrl.languages.q.pykx_program makes, for the few candidate bodies the tests use.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

Q_STANDIN_NAME = "fake_q_STANDIN"

Q_STANDIN = r'''
# fake_q_STANDIN: a STAND-IN for the q interpreter, written by the tests (tests/q_standin.py). Not q.
import json, os, re, subprocess, sys, time


class QError(Exception):
    pass


class Exit(Exception):
    def __init__(self, code):
        self.code = code


def atom(kind, value):
    return (kind, value)


# --------------------------------------------------------------------------------------- the bodies tests define
def _sum(x):
    if x[0] != "J":
        raise QError("type")
    return ("j", sum(x[1]))


def _add(x, y):
    if x[0] not in "jJ" or y[0] not in "jJ":
        raise QError("type")
    if x[0] == "j" and y[0] == "j":
        return ("j", x[1] + y[1])
    a = x[1] if x[0] == "J" else [x[1]] * len(y[1])
    b = y[1] if y[0] == "J" else [y[1]] * len(x[1])
    if len(a) != len(b):
        raise QError("length")
    return ("J", [i + j for i, j in zip(a, b)])


def _print_and_exit(text):
    def body(*_):
        sys.stdout.write(text)
        sys.stdout.flush()
        raise Exit(0)
    return body


def _show_then(value):
    def body(*_):
        print(display(value), flush=True)
        return value_of(("j", 0))
    return body


def _loop(*_):
    while True:
        pass


def _flood(*_):
    while True:
        sys.stdout.write("flood\n" * 1000)


def _boom(*_):
    raise QError("boom")


def _qhome(*_):
    return ("C", os.environ.get("QHOME", ""))


def _daemon(*_):
    # leaves a process behind that, for 20 seconds, waits for the judge to start and then overwrites the saved value
    code = ("import json, os, time\n"
            "for _ in range(4000):\n"
            "    time.sleep(0.005)\n"
            "    if any(f.startswith('qrl_judge_') for f in os.listdir('.')):\n"
            "        open('qrl_result', 'w').write(json.dumps(['j', 99]))\n"
            "        print('99', flush=True)\n")
    subprocess.Popen([sys.executable, "-I", "-c", code], start_new_session=True, stdin=subprocess.DEVNULL)
    return ("j", 6)


def _peek(*_):
    # looks for the expected values wherever a program of the same user could: the runner's stdin, memory maps,
    # environment, its own stdin, every file in the working folder
    found = b""
    places = ["/proc/1/fd/0", "/proc/1/environ", "/proc/1/cmdline", "/proc/%d/fd/0" % os.getppid(),
              "/proc/%d/environ" % os.getppid(), "/dev/stdin"]
    places += [os.path.join(".", f) for f in os.listdir(".")]
    for place in places:
        try:
            with open(place, "rb") as f:
                found += f.read(1 << 20)
        except OSError:
            pass
    return ("b", b"qrlsecret" in found)


def _fill(*_):
    # fills the working folder (the sandbox's /tmp holds 64 MiB) with files of 15 MiB, then answers 6
    for i in range(6):
        try:
            with open("junk%d" % i, "wb") as f:
                f.write(b"x" * (15 << 20))
        except OSError:
            break
    return ("j", 6)


BODIES = {
    "{sum x}": lambda x: _sum(x),
    "{1+sum x}": lambda x: ("j", 1 + _sum(x)[1]),
    "{[x;y] x+y}": _add,
    "{reverse x}": lambda x: (x[0], x[1][::-1]),
    "{-1 \"6\"; exit 0}": _print_and_exit("6\n"),
    "{-1 \"qrl-judge-begin\"; -1 \"6\"; -1 \"qrl-judge-end\"; exit 0}":
        _print_and_exit("qrl-judge-begin\n6\nqrl-judge-end\n"),
    "{show 6; 0}": _show_then(("j", 6)),
    "{while[1b;]}": _loop,
    "{while[1b;-1 \"flood\"]}": _flood,
    "{'boom}": _boom,
    "{getenv `QHOME}": _qhome,
    "{.qrl.daemon[]}": _daemon,
    "{.qrl.peek[]}": _peek,
    "{.qrl.fill[]}": _fill,
}


def value_of(v):
    return v


# --------------------------------------------------------------------------------------------- display, as q
def display(v):
    kind, x = v
    if kind == "j":
        return str(x)
    if kind == "J":
        return "`long$()" if not x else ("," if len(x) == 1 else "") + " ".join(map(str, x))
    if kind == "f":
        return (repr(float(x)).rstrip("0").rstrip(".") + ("f" if float(x).is_integer() else "")) if x == x else "0n"
    if kind == "b":
        return "1b" if x else "0b"
    if kind == "B":
        return ("," if len(x) == 1 else "") + "".join("1" if b else "0" for b in x) + "b"
    if kind == "c":
        return '"' + x + '"'
    if kind == "C":
        return ("," if len(x) == 1 else "") + '"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if kind == "s":
        return "`" + x
    if kind == "S":
        return ("," if len(x) == 1 else "") + "".join("`" + s for s in x)
    if kind == "0":
        return "\n".join(display(i) for i in x)
    if kind == "fn":
        return x
    raise QError("nyi")


# ------------------------------------------------------------------------------------------------- parsing
def split_top(text, sep=";"):
    parts, depth, cur, in_str, i = [], 0, "", False, 0
    while i < len(text):
        c = text[i]
        if in_str:
            cur += c
            if c == "\\":
                cur += text[i + 1]
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str, cur = True, cur + c
        elif c in "[({":
            depth, cur = depth + 1, cur + c
        elif c in "])}":
            depth, cur = depth - 1, cur + c
        elif c == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    return parts


def unescape(body):
    out, i = "", 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            n = body[i + 1]
            if n.isdigit():
                out += chr(int(body[i + 1:i + 4], 8))
                i += 4
                continue
            out += {"n": "\n", "t": "\t", "r": "\r"}.get(n, n)
            i += 2
            continue
        out += c
        i += 1
    return out


NUMBER = r"-?\d+(?:\.\d*)?(?:e-?\d+)?[jf]?"
STRING = r'"(?:[^"\\]|\\.)*"|\(enlist "(?:[^"\\]|\\.)"\)'  # a q string literal, as qrl.languages.q.q_string writes


def literal(text):
    t = text.strip()
    if re.fullmatch(r'"(?:[^"\\]|\\.)*"', t, re.S):
        s = unescape(t[1:-1])
        return ("c", s) if len(s) == 1 else ("C", s)
    if re.fullmatch(r"(?:`[\w.:/]*)+", t):
        syms = t.split("`")[1:]
        return ("s", syms[0]) if len(syms) == 1 else ("S", syms)
    if re.fullmatch(r"[01]b", t):
        return ("b", t == "1b")
    if re.fullmatch(r"[01]{2,}b", t):
        return ("B", [c == "1" for c in t[:-1]])
    if re.fullmatch(rf"{NUMBER}(?: +{NUMBER})*", t):
        items = t.split()
        floats = any(("." in i or i.endswith("f") or "e" in i) for i in items)
        nums = [float(i.rstrip("f")) if floats else int(i.rstrip("j")) for i in items]
        if len(nums) == 1:
            return ("f" if floats else "j", nums[0])
        return ("F" if floats else "J", nums)
    return None


class Q:
    def __init__(self):
        self.names = {}

    def run_text(self, text):
        lines = text.split("\n")
        i = 0
        while i < len(lines):
            line = lines[i]
            while i + 1 < len(lines) and lines[i + 1][:1].isspace() and lines[i + 1].strip():
                i += 1  # an indented line continues the one before, as in a q script
                line += " " + lines[i].strip()
            self.run_line(line)
            i += 1

    def run_line(self, line):
        line = line.rstrip()
        if not line.strip() or line.lstrip().startswith("/"):
            return
        if line == "\\\\":
            raise Exit(0)
        if line.startswith("\\l "):
            with open(line[3:].strip()) as f:
                self.run_text(f.read())
            return
        if line.startswith("\\d"):
            return
        m = re.fullmatch(rf'@\[\{{`:(\S+?) set value x\}};({STRING});\{{`:(\S+?) 0: enlist x\}}\]', line)
        if m:  # the trapped expression of qrl.languages.q.main_script
            try:
                save(m[1], self.value(m[2]))
            except QError as e:
                with open(m[3], "w") as f:
                    f.write(str(e) + "\n")
            return
        m = re.fullmatch(r'-1 "qrl (\d+) ",@\[\{\$\[\(get x 0\)~value x 1;"pass";"fail"\]\};\(`:(\S+?);'
                         rf'({STRING})\);\{{"error ",x\}}\];?', line)
        if m:  # the comparison of qrl.languages.q.match_script
            try:
                word = "pass" if load(m[2]) == self.value(m[3]) else "fail"
            except QError as e:
                word = "error " + str(e)
            print(f"qrl {m[1]} {word}", flush=True)
            return
        for statement in split_top(line):
            if statement.strip():
                self.statement(statement.strip())

    def value(self, literal):
        """q's ``value`` of a string literal: a string (char vector) is evaluated; a char atom (one character in
        quotes) is not a string, and comes back as it is."""
        m = re.fullmatch(r'\(enlist ("(?:[^"\\]|\\.)")\)', literal)
        if m:
            return self.eval(unescape(m[1][1:-1]))
        text = unescape(literal[1:-1])
        return ("c", text) if len(text) == 1 else self.eval(text)

    def statement(self, s):
        m = re.fullmatch(r"exit\s+(\d+)", s)
        if m:
            raise Exit(int(m[1]))
        m = re.fullmatch(r"([.A-Za-z][.\w]*)\s*:\s*(\{.*\})", s, re.S)
        if m:
            self.names[m[1]] = ("fn", m[2])
            return
        m = re.fullmatch(r"([.A-Za-z][.\w]*)\s*:(.*)", s, re.S)
        if m and not m[2].startswith(":"):
            self.names[m[1]] = self.eval(m[2])
            return
        m = re.fullmatch(r"`:(\S+)\s+set\s+(.*)", s)
        if m:
            save(m[1], self.eval(m[2]))
            return
        if s.startswith("show "):
            print(display(self.eval(s[5:])), flush=True)
            return
        if s.startswith("-1 "):
            v = self.eval(s[3:])
            if v[0] not in "cC":
                raise QError("type")
            print(v[1], flush=True)
            return
        self.eval(s)

    def eval(self, text):
        t = text.strip()
        lit = literal(t)
        if lit is not None:
            return lit
        if t.startswith("(") and t.endswith(")"):
            items = [self.eval(p) for p in split_top(t[1:-1])] if t[1:-1].strip() else []
            kinds = {k for k, _ in items}
            if len(kinds) == 1 and next(iter(kinds)) in "jfbs":
                return (next(iter(kinds)).upper(), [x for _, x in items])
            return ("0", items)
        m = re.fullmatch(r"get\s+`:(\S+)", t)
        if m:
            return load(m[1])
        m = re.fullmatch(r"([.A-Za-z][.\w]*)\[(.*)\]", t, re.S)
        if m:
            args = [self.eval(a) for a in split_top(m[2])] if m[2].strip() else []
            return self.call(m[1], args)
        if re.fullmatch(r"[.A-Za-z][.\w]*", t):
            if t not in self.names:
                raise QError(t)
            return self.names[t]
        raise QError("stand-in: not understood: " + t[:60])

    def call(self, name, args):
        if name not in self.names:
            raise QError(name)
        kind, body = self.names[name]
        if kind != "fn":
            raise QError("type")
        key = re.sub(r"\s+", " ", body.strip())
        if key not in BODIES:
            raise QError("stand-in: unknown function body " + key[:60])
        return BODIES[key](*args)


def save(path, v):
    with open(path, "w") as f:
        json.dump(v, f)


def load(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        raise QError(path + ". OS reports: No such file or directory")
    return freeze(data)


def freeze(data):
    kind, x = data
    return (kind, [freeze(i) for i in x] if kind == "0" else x)


def main(argv):
    qhome = os.environ.get("QHOME")
    if qhome:
        try:
            open(os.path.join(qhome, "q.k")).close()
        except OSError as e:
            print(f"'q.k. OS reports: {e.strerror}", file=sys.stderr)
            return 1
    q = Q()
    script = next((a for a in argv if not a.startswith("-")), None)
    try:
        if script:
            try:
                with open(script) as f:
                    q.run_text(f.read())
            except QError as e:
                print("'" + str(e), file=sys.stderr, flush=True)
        for line in sys.stdin:
            try:
                q.run_line(line)
            except QError as e:
                print("'" + str(e), file=sys.stderr, flush=True)
    except Exit as e:
        sys.stdout.flush()
        return e.code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''


PYKX_STANDIN = r'''
"""STAND-IN for PyKX, written by the tests (tests/q_standin.py): answers only the calls of qrl.languages.q.pykx_program."""
import os
import re

licensed = os.environ.get("PYKX_STANDIN_LICENSED", "1") == "1"


class LicenseException(Exception):
    pass


class QError(Exception):
    pass


class _K:
    def __init__(self, value):
        self.value = value

    def py(self):
        return self.value


def _reverse(x):
    return x[::-1]


def _boom(*_):
    raise QError("boom")


_BODIES = {
    "{max x}": lambda x: max(x),
    "{reverse x}": _reverse,
    "{[x;y] x+y}": lambda x, y: x + y,
    "{(sum x;prd x)}": lambda x: [sum(x), __import__("math").prod(x)],
    "{'boom}": _boom,
}
_defined = {}


class _Function:
    def __init__(self, body):
        self.body = body

    def __call__(self, *args):
        return _K(_BODIES[self.body](*args))


def q(code, *args):
    if not licensed:
        raise LicenseException("Cannot run q code via 'pykx.q' as PyKX is operating in unlicensed mode.")
    if code == "1+1":
        return _K(2)
    if code == '{system "l ",x}':
        with open(args[0].decode()) as f:
            for line in f.read().splitlines():
                m = re.fullmatch(r"\s*([.\w]+)\s*:\s*(\{.*\})\s*;?\s*", line)
                if m:
                    if m[2] not in _BODIES:
                        raise QError("stand-in: unknown body " + m[2])
                    _defined[m[1]] = m[2]
        return _K(None)
    if code in _defined:
        return _Function(_defined[code])
    raise QError(code)
'''


def _open_up(path: Path) -> None:
    path.chmod(path.stat().st_mode | stat.S_IROTH | stat.S_IXOTH | stat.S_IRGRP | stat.S_IXGRP)


def _python() -> str:
    """An interpreter the sandbox's unprivileged users can run even without a mount namespace (where this one may
    lie under a closed folder such as /root)."""
    system = "/usr/bin/python3"
    if os.access(system, os.X_OK) and os.stat(os.path.realpath(system)).st_mode & stat.S_IXOTH:
        return system
    return os.path.realpath(sys.executable)


def build_q_standin(folder: Path) -> Path:
    """Write the q stand-in into ``folder`` (readable and executable by everyone) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Q_STANDIN_NAME
    path.write_text(f"#!{_python()} -I\n" + Q_STANDIN.lstrip("\n"), encoding="utf-8")
    path.chmod(0o755)
    _open_up(folder)
    return path


def build_pykx_standin(folder: Path) -> Path:
    """Write the PyKX stand-in package into ``folder`` (a folder to put on sys.path) and return ``folder``."""
    package = folder / "pykx"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(PYKX_STANDIN.lstrip("\n"), encoding="utf-8")
    for p in (folder, package, package / "__init__.py"):
        _open_up(p)
    return folder
