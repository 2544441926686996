"""The q code in an answer without fences (```q, ```k and ```kdb fences are registered with qrl.problems): the
entry point's definition and the definitions around it."""

from __future__ import annotations

import re

from qrl.languages.q.syntax import closing, depth_change

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
        end = closing(text, text.index("{", inline.start()))  # "Here it is: solve:{...}, which ..."
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
        depth = max(0, depth + depth_change(line))
        end += 1
    code = lines[first:end]
    code[start - first] = code[start - first].rstrip()
    return "\n".join(code).rstrip() + "\n"
