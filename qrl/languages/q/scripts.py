"""The q scripts a test runs: the program's process (load the program, run the test, save the value) and the judge
processes, which run no program code (show the saved value, or match it with the expected one, between markers).
Only these statements are what the stand-in of the tests (tests/q_standin.py) has to understand."""

from __future__ import annotations

from collections.abc import Sequence

from qrl.languages.q.formats import ScriptTest

PROGRAM_FILE = "qrl_program.q"  # the program under test, in the sandbox's working folder
MAIN_FILE = "qrl_main.q"  # loads the program, runs the test, saves the value
RESULT_FILE = "qrl_result"  # MSML: the value of `result`, as `set` writes it
BEGIN, END = "qrl-judge-begin", "qrl-judge-end"  # around the judge process's answer (it runs no program code)

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
