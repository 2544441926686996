"""The data of problems and their judging: a problem and its tests, a completion, the jobs a submission runs as,
the verdict, and the protocols an executor and a sandbox run meet. Plain data: every other module of the package
builds on these."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Status = Literal[
    "passed",
    "failed",
    "syntax_error",
    "runtime_error",
    "timeout",
    "memory_limit",
    "output_limit",
    "infra_error",
]
LIMIT_STATUSES = ("timeout", "memory_limit", "output_limit")
_NO_LITERAL = object()


@dataclass(frozen=True)
class CallTest:
    """``entry_point(*args, **kwargs)`` must return ``expected`` as JSON data (floats to within 1e-6)."""

    args: list
    kwargs: dict
    expected: Any


@dataclass(frozen=True)
class AssertTest:
    """One assert statement of HumanEval's ``check`` or MBPP's ``test_list``. When it has the shape
    ``assert <expr> == <literal>``, only ``<expr>`` runs in the sandbox and ``expected`` is compared here."""

    text: str
    expected: Any = _NO_LITERAL

    @property
    def compared_here(self) -> bool:
        return self.expected is not _NO_LITERAL


@dataclass(frozen=True)
class IOTest:
    """The program reads ``stdin`` and must print ``stdout`` (compared token by token, whitespace ignored)."""

    stdin: str
    stdout: str


Test = CallTest | AssertTest | IOTest


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str  # what the model sees
    tests: tuple[Test, ...]
    language: str = "python"
    entry_point: str | None = None  # None for stdin/stdout problems
    reference: str | None = None  # a solution, complete (joined to the prompt where the format wants it)
    setup: str = ""  # code the tests need, run before them on the tests' side (MBPP's test_setup_code)
    completion_joins_prompt: bool = False  # HumanEval-style: a completion continues the prompt's code
    difficulty: str | None = None
    split: str | None = None
    source_format: str = "qrl"
    where: str = ""  # file:line it came from
    test_script: str = ""  # assert tests, instrumented (see asserts.instrument); run on the tests' side
    test_names: tuple[str, ...] = ()  # names of the program's the test script uses
    # The tests share the program's process: when no verdict is decided in the sandbox (every test sends back a
    # value compared here, so the program has nothing to gain from tampering), or when the tests build the program's
    # own objects. Otherwise the program runs in a process of its own, apart from the tests (see qrl.execution.harness).
    tests_in_process: bool = False

    def __hash__(self) -> int:  # task ids are unique in a set; tests hold lists, which do not hash
        return hash(self.task_id)


@dataclass(frozen=True)
class Completion:
    task_id: str
    completion: str
    where: str


@dataclass(frozen=True)
class Job:
    """One sandbox run: the program source and its stdin."""

    source: str
    stdin: bytes = b""


@dataclass(frozen=True)
class Submission:
    """A completion made ready to run: its full program, the jobs, and the key under which its verdict is cached."""

    problem: Problem
    code: str
    key: str
    jobs: tuple[Job, ...]
    syntax_error: str | None = None  # found without running anything: no jobs
    infra_error: str | None = None  # making it ready failed (a bug here, not the answer's fault): no jobs
    missing_entry_point: bool = False  # nothing in the program binds the problem's entry point (see judge)


@dataclass(frozen=True)
class Verdict:
    status: Status
    tests_passed: int
    tests_total: int
    cpu_time: float = 0.0  # kernel-measured, all jobs together
    wall_time: float = 0.0
    detail: str = ""
    # a failed answer that gave every test the same value (say False to every yes/no question): its partial credit
    # is luck, and a policy that drifts towards such answers is gaming the reward
    same_value: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class RunOutcome(Protocol):
    """What ``judge`` needs of a sandbox run (``sandbox.RunResult`` has it)."""

    status: str
    exit_code: int | None
    stdout: str
    report: str
    cpu_time: float
    wall_time: float
    detail: str


class Executor(Protocol):
    """What runs one language. Optional too: ``configure(**options)`` (run options such as ``q_binary``),
    ``check(problems)`` (raise UserError at start when these problems cannot run here), and ``sandbox_paths()``
    (folders the programs must be able to read inside the sandbox, such as an interpreter's)."""

    preload: tuple[str, ...]  # modules the sandbox servers should import up front

    def prepare(self, problem: Problem, code: str, reply_limit: int) -> Submission: ...

    def judge(self, submission: Submission, outcomes: Sequence[RunOutcome]) -> Verdict: ...
