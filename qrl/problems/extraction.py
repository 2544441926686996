"""The code in a model's answer: the right fenced block, else the answer without the prose around it (each language
registers its fence tags and how to strip its prose), and the full program a completion makes for a problem."""

from __future__ import annotations

import ast
import re

from qrl.problems.registry import language_tags, prose_stripper, register_language
from qrl.problems.types import Problem

_FENCE_OPEN = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+#./-]*)")
_PYTHON_START = re.compile(r"^(def |async def |class |import |from |@|if __name__)")


def extract_code(text: str, language: str, entry_point: str | None = None) -> str:
    """The code in a model's answer: the right fenced block if there are any (one that defines ``entry_point``
    first, tagged with the language before untagged; else tagged, else untagged; the longest), else the answer
    without the prose around it."""
    blocks = _fenced_blocks(text, language, entry_point)
    tags = language_tags(language)
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
    strip = prose_stripper(language)
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


def _defines(code: str, name: str, language: str) -> bool:
    if language == "python":
        return re.search(rf"^(async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None
    return re.search(rf"^{re.escape(name)}\s*:", code, re.MULTILINE) is not None


def may_define(code: str, name: str, language: str) -> bool:
    """Whether ``code`` could bind ``name``: generous, so that "the answer defines no function of that name" is said
    only when nothing in it could (for Python: no definition, assignment or import of the name anywhere, no
    ``import *``, nothing that defines names at run time; code that does not parse is not judged here)."""
    if language != "python":
        word = re.escape(name)
        return re.search(rf"(?<![\w.`]){word}\s*::?|`{word}\b", code) is not None  # q: name: or `name (set)
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return True
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, ast.Name) and (node.id in _DYNAMIC or node.id == name and isinstance(node.ctx, ast.Store)):
            return True
        if isinstance(node, ast.alias) and (node.name == "*" or (node.asname or node.name.split(".")[0]) == name):
            return True
        if isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name == name:
            return True
    return False


_DYNAMIC = {"exec", "eval", "globals", "locals", "vars", "setattr", "__import__", "__builtins__", "compile"}


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


register_language(
    "python", tags={"python", "py", "python3", "py3"}, strip_prose=lambda text, _entry_point: _strip_prose(text)
)
