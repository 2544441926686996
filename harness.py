"""The trusted half of a test run. It runs inside the sandbox; the program under test runs in a child of its own.

Expected values never enter the sandbox where that is possible: call tests send back the result, and ``assert x ==
<literal>`` tests the left-hand value, as plain data; the caller compares them (see problems.py). Such tests run in the
program's own process (one fork cheaper): whatever it tampers with, the values to forge are not there.

Asserts of other shapes are decided here, as pass/fail, so for them the program runs in a child of its own. A program
sharing a process with its tests could patch the tests' builtins, write the harness's report itself, or read the
expected values out of memory. Here the program only ever answers calls, and its answers cross a pipe as plain data
(exact builtin types, rebuilt on this side), so no object with a forged ``__eq__`` and no subclass of ``int`` reaches a
comparison. The harness is pid 1 of the program's pid namespace (signals from the program are ignored by the kernel)
and not dumpable (the program cannot trace it or read its memory). The tests arrive on stdin only after the program's
process has been forked, so they are not in its memory either.

Standard library only: it is preloaded into the sandbox servers, and problems.py uses its plain-data encoding.
"""

from __future__ import annotations

import builtins
import ctypes
import functools
import json
import os
import signal
import sys
import types
from collections.abc import Callable
from typing import Any, NoReturn

REPORT_FD = (
    3  # the sandbox's report channel (sandbox.REPORT_FD): what we write there is all the caller believes
)
_BUILTINS = dict(vars(builtins))  # taken before any program ran here: the tests' builtins cannot be patched
_MAX_DEPTH = 100
_PR_SET_DUMPABLE = 4


class ProgramError(Exception):
    """The program raised, or answered with something that is not plain data: this test fails."""


class ProgramDied(Exception):
    """The program's process ended while tests were still to run: they all fail."""


class OutputLimit(Exception):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Plain data: what a program may answer, and how it crosses a pipe.


def to_plain(value: Any, depth: int = 0) -> Any:
    """Rebuild ``value`` from exact builtin types only; numpy scalars and arrays become Python ones.

    Exact types, not isinstance: a subclass could override ``__eq__``/``__hash__`` and pass any comparison.
    """
    kind = type(value)
    if value is None or kind in (bool, int, float, complex, str, bytes):
        return value
    if depth > _MAX_DEPTH:
        raise ValueError("the value is nested too deeply")
    if kind is list:
        return [to_plain(v, depth + 1) for v in value]
    if kind is tuple:
        return tuple(to_plain(v, depth + 1) for v in value)
    if kind is dict:
        return {to_plain(k, depth + 1): to_plain(v, depth + 1) for k, v in value.items()}
    if kind is set:
        return {to_plain(v, depth + 1) for v in value}
    if kind is frozenset:
        return frozenset(to_plain(v, depth + 1) for v in value)
    if kind.__module__.split(".")[0] == "numpy" and hasattr(value, "tolist"):
        return to_plain(value.tolist(), depth + 1)  # whatever tolist() gives is checked the same way
    raise TypeError(f"the result is a {kind.__name__}, not plain data")


def pack(value: Any) -> Any:
    """Plain data to JSON, keeping its types: tuples, sets, bytes, big ints and non-string keys are tagged."""
    kind = type(value)
    if value is None or kind in (bool, str, float):
        return value
    if kind is int:  # big ones in hex: no 4300-digit limit, and linear time
        return value if -(2**53) < value < 2**53 else {"i": hex(value)}
    if kind is list:
        return [pack(v) for v in value]
    if kind is tuple:
        return {"t": [pack(v) for v in value]}
    if kind is dict:
        return {"d": [[pack(k), pack(v)] for k, v in value.items()]}
    if kind is set:
        return {"s": [pack(v) for v in value]}
    if kind is frozenset:
        return {"fs": [pack(v) for v in value]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    raise TypeError(f"a {kind.__name__} is not plain data")


_UNTAG: dict[str, Callable[[Any, int], Any]] = {
    "i": lambda v, d: int(_str(v), 16),
    "t": lambda v, d: tuple(_unpack_list(v, d)),
    "d": lambda v, d: _dict(_pairs(v), d),
    "s": lambda v, d: set(_hashable(_unpack_list(v, d))),
    "fs": lambda v, d: frozenset(_hashable(_unpack_list(v, d))),
    "b": lambda v, d: bytes.fromhex(_str(v)),
    "c": lambda v, d: _complex(_unpack_list(v, d)),
}


def unpack(obj: Any, depth: int = 0) -> Any:
    """The inverse of ``pack``; anything else (it may come from the program) raises ValueError or TypeError."""
    kind = type(obj)
    if obj is None or kind in (bool, int, float, str):
        return obj
    if depth > _MAX_DEPTH + 2:
        raise ValueError("the value is nested too deeply")
    if kind is list:
        return _unpack_list(obj, depth)
    if kind is dict and len(obj) == 1:
        ((tag, inner),) = obj.items()
        if tag in _UNTAG:
            return _UNTAG[tag](inner, depth + 1)
    raise ValueError("not packed plain data")


def _unpack_list(obj: Any, depth: int) -> list:
    if type(obj) is not list:
        raise ValueError("not packed plain data")
    return [unpack(v, depth + 1) for v in obj]


def _pairs(obj: Any) -> list:
    if type(obj) is not list or any(type(p) is not list or len(p) != 2 for p in obj):
        raise ValueError("not packed plain data")
    return obj


def _hashable(items: list) -> list:
    """Items for a set or a dict's keys. Many unequal items of one hash would make building it quadratic (ints
    ``k * (2**61 - 1)`` all hash to 0): a few kilobytes of answer would stall the caller for minutes. Refused."""
    if len(items) > 64:
        buckets: dict[int, list] = {}
        for item in items:
            buckets.setdefault(hash(item), []).append(item)
        for bucket in buckets.values():
            if len(bucket) > 64 and any(type(x) is not type(bucket[0]) or x != bucket[0] for x in bucket):
                raise ValueError("too many unequal items of one hash")
    return items


def _dict(pairs: list, depth: int) -> dict:
    keys = _hashable([unpack(k, depth) for k, _ in pairs])
    return dict(zip(keys, (unpack(x, depth) for _, x in pairs), strict=True))


def _complex(parts: list) -> complex:
    if len(parts) != 2 or any(type(x) not in (int, float) for x in parts):
        raise ValueError("not packed plain data")
    try:
        return complex(float(parts[0]), float(parts[1]))
    except OverflowError:  # an int too large for a float: the sender's doing, not packed data
        raise ValueError("not packed plain data") from None


def _str(obj: Any) -> str:
    if type(obj) is not str:
        raise ValueError("not packed plain data")
    return obj


def signal_name(number: int) -> str:
    """SIGKILL, SIGRTMIN+5, or "signal 99": any number a process may die of."""
    try:
        return signal.Signals(number).name
    except ValueError:
        if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            return f"SIGRTMIN+{number - signal.SIGRTMIN}"
        return f"signal {number}"


def _text(value: Any) -> str:
    """A message the program sent, as a short string whatever it is."""
    if type(value) is str:
        return value[:500]
    try:
        return json.dumps(value)[:500]
    except (ValueError, TypeError, RecursionError):
        return "?"


def describe(error: BaseException) -> str:
    try:
        text = str(error)
    except Exception:  # noqa: BLE001 -- a program's exception may fail to print itself
        text = ""
    return f"{type(error).__name__}: {text}"[:500] if text else type(error).__name__


# ----------------------------------------------------------------------------------------------------------------
# Framing: the job arrives on stdin in two parts; lines go over pipes.


def encode_parts(public: dict, private: dict) -> bytes:
    """The job as stdin bytes. ``public`` is read before the program's process is forked, ``private`` after."""
    out = b""
    for part in (public, private):
        data = json.dumps(part).encode()
        out += len(data).to_bytes(8, "big") + data
    return out


def _read_part(fd: int) -> dict:
    size = int.from_bytes(_read_exact(fd, 8), "big")
    return json.loads(_read_exact(fd, size))


def _read_exact(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError("the job was cut short")
        data += chunk
    return data


def _write_line(fd: int, message: dict) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


class _Lines:
    def __init__(self, fd: int, limit: int):
        self.fd, self.limit, self.buffer, self.scanned = fd, limit, bytearray(), 0

    def readline(self) -> bytes | None:
        """The next line; None at end of input; OutputLimit past ``limit`` bytes without a newline."""
        while True:
            end = self.buffer.find(b"\n", self.scanned)
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                self.scanned = 0
                return line
            self.scanned = len(self.buffer)
            if len(self.buffer) > self.limit:
                raise OutputLimit
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk


class _Report:
    def __init__(self, fd: int):
        self.fd = fd

    def send(self, **event: Any) -> None:
        _write_line(self.fd, event)


# ----------------------------------------------------------------------------------------------------------------
# The program: in a child process (normally), or in this process (tests that need the program's own classes).


def _load(code: types.CodeType) -> tuple[dict, str | None]:
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)  # noqa: S102 -- running the program is the point
    except SystemExit as e:
        return main.__dict__, f"the program called exit({e.code!r}) while loading"
    except BaseException as e:  # noqa: BLE001 -- whatever it raises, it did not load
        return main.__dict__, describe(e)
    return main.__dict__, None


def _missing(namespace: dict, names: list[str]) -> list[str]:
    return [n for n in names if n not in namespace]


class _Remote:
    """The program in a forked child that answers calls; only plain data comes back."""

    def __init__(self, code: types.CodeType, entry_point: str, reply_limit: int):
        requests_r, self.requests = os.pipe()
        replies, replies_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.requests)
            os.close(replies)
            _host(code, entry_point, requests_r, replies_w)
        os.close(requests_r)
        os.close(replies_w)
        self.replies = _Lines(replies, reply_limit)
        self.death: str | None = None

    def load(self) -> str | None:
        """None once the program is loaded, else why not. Whatever it wrote on the pipe is its own doing."""
        try:
            reply = self._receive()
        except ProgramError as e:
            return str(e)
        if "loaded" not in reply:
            return _text(reply.get("load_error")) or "the program answered out of turn while loading"
        return None

    def call(self, name: str, args: Any, kwargs: Any) -> Any:
        """Call ``name`` with packed arguments and return its packed result."""
        if self.death:
            raise ProgramDied(self.death)
        try:
            _write_line(self.requests, {"name": name, "args": args, "kwargs": kwargs})
        except BrokenPipeError:
            self._died()
        reply = self._receive()
        if "error" in reply:
            raise ProgramError(_text(reply["error"]))
        if "v" not in reply:
            raise ProgramError("the program answered out of turn")
        return reply["v"]

    def bind(self, name: str) -> Callable:
        def stub(*args: Any, **kwargs: Any) -> Any:
            result = self.call(name, pack(to_plain(list(args))), pack(to_plain(kwargs)))
            try:
                return unpack(result)
            except (ValueError, TypeError, RecursionError) as e:
                raise ProgramError(
                    f"the program answered with something that is not plain data ({e})"
                ) from None

        stub.__name__ = stub.__qualname__ = name
        return stub

    def _receive(self) -> dict:
        line = self.replies.readline()
        if line is None:
            self._died()
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError):
            raise ProgramError("the program garbled its answer") from None
        if type(reply) is not dict:
            raise ProgramError("the program garbled its answer")
        return reply

    def _died(self) -> NoReturn:
        while True:
            _, status = os.waitpid(self.pid, 0)
            if not os.WIFSTOPPED(status):
                break
            os.kill(self.pid, signal.SIGKILL)  # stopped, as a tracee of ours would be: it ends here
        code = os.waitstatus_to_exitcode(status)
        how = f"killed by {signal_name(-code)}" if code < 0 else f"exited with code {code}"
        self.death = f"the program's process {how} before the tests were done"
        raise ProgramDied(self.death)

    def close(self) -> None:
        if not self.death:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)


def _close_stdin() -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def _host(code: types.CodeType, entry_point: str, requests: int, replies: int) -> NoReturn:
    """In the program's process: run the module, then answer calls until the harness hangs up."""
    _close_stdin()  # stdin still holds the unread tests: gone before any program code runs
    os.close(REPORT_FD)
    _set_dumpable(True)  # its own /proc/self stays readable to it; the harness stays closed
    namespace, error = _load(code)
    if error is None and entry_point not in namespace:
        error = f"the program does not define `{entry_point}`"
    _write_line(replies, {"load_error": error} if error else {"loaded": True})
    if error:
        os._exit(1)
    lines = _Lines(requests, 1 << 40)  # requests come from the harness
    while (line := lines.readline()) is not None:
        request = json.loads(line)
        try:
            if request["name"] not in namespace:
                raise NameError(f"name '{request['name']}' is not defined")
            value = namespace[request["name"]](*unpack(request["args"]), **unpack(request["kwargs"]))
            reply = {"v": pack(to_plain(value))}
        except BaseException as e:  # noqa: BLE001 -- whatever the program raises fails this test only
            reply = {"error": describe(e)}
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        _write_line(replies, reply)
    os._exit(0)


class _InProcess:
    """The program in this very process, one fork cheaper. Used when every test sends back a value that the caller
    compares (the program could tamper with the harness, but the expected values are not here to forge), and for
    tests that build the program's own objects (say ``Pair(1, 2)``), which cannot cross a pipe."""

    def __init__(self, code: types.CodeType, entry_point: str, reply_limit: int):
        self.code, self.entry_point, self.death = code, entry_point, None
        self.namespace: dict = {}

    def load(self) -> str | None:
        self.namespace, error = _load(self.code)
        if error is None and self.entry_point not in self.namespace:
            error = f"the program does not define `{self.entry_point}`"
        return error

    def call(self, name: str, args: Any, kwargs: Any) -> Any:
        return pack(self.bind(name)(*unpack(args), **unpack(kwargs)))

    def bind(self, name: str) -> Any:
        target = self.namespace.get(name)
        if isinstance(target, type) or not callable(target):
            return target  # a class the tests instantiate, or a value

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return to_plain(target(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 -- even exit() fails this test only
                raise ProgramError(describe(e)) from None

        wrapper.__name__ = name
        return wrapper

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------------------------
# The tests.


def _run_calls(program: _Remote | _InProcess, entry_point: str, tests: list[dict], report: _Report) -> None:
    for i, test in enumerate(tests):
        try:
            value = json.dumps(program.call(entry_point, test["args"], test["kwargs"]))
        except (ProgramError, ValueError, TypeError, RecursionError) as e:
            report.send(e="test", i=i, error=str(e) if isinstance(e, ProgramError) else describe(e))
        except ProgramDied:
            return
        else:
            report.send(e="test", i=i, v=json.loads(value))


class _Blocks:
    """``with __test__(i):`` around each test statement; ``__probe__(i, x)`` sends the value of ``x == <literal>``'s
    left side instead of a pass, for the caller to compare."""

    def __init__(self, report: _Report):
        self.report, self.index, self.probed = report, -1, False

    def __call__(self, index: int) -> _Blocks:
        self.index, self.probed = index, False
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> bool:
        if kind is None:
            if not self.probed:
                self.report.send(e="test", i=self.index, ok=True)
            return False
        if not issubclass(kind, Exception):
            return False
        message = str(error) if isinstance(error, ProgramError | ProgramDied) else describe(error)
        self.report.send(e="test", i=self.index, error=message)
        return True

    def probe(self, index: int, value: Any) -> None:
        self.report.send(e="test", i=index, v=pack(to_plain(value)))
        self.probed = True


def _run_script(program: _Remote | _InProcess, public: dict, script: str, report: _Report) -> None:
    blocks = _Blocks(report)
    namespace = {"__builtins__": dict(_BUILTINS), "__name__": "__tests__", "__test__": blocks,
                 "__probe__": blocks.probe, "__candidate__": program.bind(public["entry_point"])}  # fmt: skip
    for name in public["names"]:
        namespace[name] = program.bind(name)
    namespace[public["entry_point"]] = namespace["__candidate__"]  # MBPP's asserts call it by name
    try:
        exec(compile(script, "tests.py", "exec"), namespace)  # noqa: S102 -- the problem's own tests
    except ProgramDied:
        pass
    except Exception as e:  # noqa: BLE001 -- the tests' own set-up failed: the remaining tests fail
        report.send(e="script_error", msg=describe(e))


def _set_dumpable(on: bool) -> None:
    try:
        _libc().prctl(_PR_SET_DUMPABLE, int(on), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        pass


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)


def main() -> None:
    """Run one job from stdin and report on fd 3: ``syntax_error`` or ``load_error``, or one ``test`` event per test,
    then ``died`` if the program's process ended early, and ``done`` when the harness finished."""
    report = _Report(REPORT_FD)
    program: _Remote | _InProcess | None = None
    try:
        _set_dumpable(False)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as pid 1, signals without a handler are ignored
        public = _read_part(0)
        try:
            code = compile(public["code"], "solution.py", "exec")
        except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError) as e:
            report.send(e="syntax_error", msg=describe(e))
            return
        host = _InProcess if public["in_process"] else _Remote
        program = host(code, public["entry_point"], public["reply_limit"])  # forked before the tests are read
        private = _read_part(0)
        _close_stdin()
        error = program.load()
        if error:
            report.send(e="load_error", msg=error)
            return
        report.send(e="loaded")
        if public["kind"] == "call":
            _run_calls(program, public["entry_point"], private["tests"], report)
        else:
            _run_script(program, public, private["script"], report)
        if program.death:
            report.send(e="died", msg=program.death)
    except (ProgramDied, ProgramError) as e:  # the program's doing, wherever it surfaced
        report.send(e="died", msg=str(e))
    except OutputLimit:
        report.send(e="output_limit")
    except MemoryError:
        report.send(e="memory_limit")
    except Exception as e:  # noqa: BLE001 -- our own failure: the caller scores it as infra_error, not zero
        report.send(e="harness_error", msg=describe(e))
    finally:
        report.send(e="done")
        if program is not None:
            program.close()
