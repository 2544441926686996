"""Python assert tests: each assert statement of a test becomes one test, and the verdict on it is taken out of the
program's reach. Also what the tests' side needs besides the asserts: the names they take from the program, the
prompt's helpers, the modules MBPP's asserts use without importing them."""

from __future__ import annotations

import ast
import builtins
import sys
from typing import Any

from qrl.problems.types import AssertTest


def instrument(body: list[ast.stmt], tests: list[AssertTest], source: str) -> list[ast.stmt]:
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


def free_names(tree: ast.AST) -> set[str]:
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


def top_level_kinds(code: str) -> dict[str, str]:
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


def prompt_helpers(prompt: str, entry_point: str) -> list[ast.stmt]:
    """The prompt's code but the function to write (its imports, helpers and constants, say HumanEval/32's ``poly``),
    for the tests' side: the tests use the problem's helpers, never what an answer defines under their names."""
    try:
        body = ast.parse(prompt).body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    defines = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    return [n for n in body if not (isinstance(n, defines) and n.name == entry_point)]


def module_imports(tests: ast.Module, reference: str | None) -> list[str]:
    """Import statements for the modules MBPP's asserts use without importing them (``math.isclose(...)``): the
    reference's own imports of those names, else standard-library modules of the name. They run on the tests'
    side, so that an assert needs no module from the answer's namespace."""
    wanted = free_names(tests)
    imports, kinds = {}, {}
    if reference:
        try:
            body = ast.parse(reference).body
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            body = []
        kinds = top_level_kinds(reference)
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


def first_called_name(tree: ast.AST) -> str | None:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id not in vars(builtins)
        ):
            return node.func.id
    return None
