"""Reading q source text without a q interpreter: string contents and comments told apart from code, line by line,
and brackets matched outside them. The code extraction of answers and the Q code-quality rules read q through
these."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

OPEN, CLOSE = "([{", ")]}"
_DEFINITION = re.compile(r"^\.?[A-Za-z][\w.]*\s*::?\s*\{")


@dataclass(frozen=True)
class Line:
    code: str  # the line with comments removed and string contents blanked
    comment: bool  # carries a comment (a whole-line, trailing or block comment)
    comment_only: bool  # nothing but comment
    definition: bool  # starts a top-level `name:{` definition


@dataclass(frozen=True)
class Nesting:
    max_depth: int  # the deepest bracket nesting (a lambda's parameter list does not count)
    function_lines: tuple[int, ...]  # the lines each `{...}` spans, in the order they close
    error: str | None  # the first bracket unmatched or never closed


def blank(text: str, in_string: bool = False, comments: bool = True) -> tuple[str, bool, bool]:
    """``text`` with every character inside a string blanked (the quotes kept, so positions stay) and, with
    ``comments``, cut at a comment: q reads ``/`` at the start or after a space or tab as one. Also whether a comment
    was cut, and whether a string is still open at the end (``in_string``: one is open at the start)."""
    chars, escaped = [], False
    for col, ch in enumerate(text):
        if in_string:
            chars.append(ch if ch == '"' and not escaped else " ")
            in_string = escaped or ch != '"'
            escaped = not escaped and ch == "\\"
        elif comments and ch == "/" and (col == 0 or text[col - 1] in " \t"):
            return "".join(chars), True, False
        else:
            chars.append(ch)
            in_string = ch == '"'
    return "".join(chars), False, in_string


def scan_lines(raw_lines: Sequence[str]) -> tuple[list[Line], str | None]:
    """A q script's lines with strings and comments told apart; the error, if a string never ends."""
    lines: list[Line] = []
    in_string = in_block = ended = False
    for raw in raw_lines:
        stripped = raw.rstrip()
        if ended or (in_block and stripped != "\\"):
            lines.append(Line("", bool(stripped), bool(stripped), False))
            continue
        if not in_string and stripped in ("/", "\\"):
            # A lone "/" opens a block comment, a lone "\" closes it; outside a block, "\" ends the script.
            in_block, ended = stripped == "/", not in_block and stripped == "\\"
            lines.append(Line("", True, True, False))
            continue
        if not in_string and raw.startswith("\\"):  # a system command such as \l file.q: no q syntax
            lines.append(Line(raw, False, False, False))
            continue
        definition = not in_string and bool(_DEFINITION.match(raw))
        text, comment, in_string = blank(raw, in_string)
        lines.append(Line(text, comment, comment and not text.strip(), definition))
    return lines, ("unterminated string" if in_string else None)


def nesting(lines: Sequence[Line]) -> Nesting:
    """How the brackets of scanned lines nest, and the first that does not match."""
    stack: list[tuple[str, int, bool]] = []  # (bracket, line, counts towards depth)
    depth = max_depth = 0
    spans: list[int] = []
    previous = ""
    for lineno, line in enumerate(lines, start=1):
        for ch in line.code:
            if ch in OPEN:
                counts = not (ch == "[" and previous == "{")
                stack.append((ch, lineno, counts))
                depth += counts
                max_depth = max(max_depth, depth)
            elif ch in CLOSE:
                if not stack or OPEN.index(stack[-1][0]) != CLOSE.index(ch):
                    return Nesting(max_depth, tuple(spans), f"line {lineno}: unmatched '{ch}'")
                opener, start, counts = stack.pop()
                depth -= counts
                if opener == "{":
                    spans.append(lineno - start + 1)
            if not ch.isspace():
                previous = ch
    if stack:
        return Nesting(max_depth, tuple(spans), f"line {stack[-1][1]}: '{stack[-1][0]}' never closed")
    return Nesting(max_depth, tuple(spans), None)


def depth_change(line: str) -> int:
    """Open minus closed brackets on one line, outside strings and comments."""
    code = blank(line)[0]
    return sum(ch in OPEN for ch in code) - sum(ch in CLOSE for ch in code)


def closing(text: str, opening: int) -> int | None:
    """Where the bracket at ``opening`` is closed (the index after it), outside strings; None if it is not."""
    depth = 0
    for i, ch in enumerate(blank(text[opening:], comments=False)[0]):
        depth += (ch in OPEN) - (ch in CLOSE)
        if depth == 0:
            return opening + i + 1
    return None
