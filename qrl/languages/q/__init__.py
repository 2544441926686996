"""Q (kdb+): the problem formats, the executor that runs q programs in the sandbox, and finding the q interpreter.
Importing this package registers the Q formats, fence tags and executor with qrl.problems.

Three forms of Q problem load through ``problems.load_problems`` (docs/q.md has the details):

- ``msml``: Morgan Stanley's MSML layout, one folder per problem: ``problem_description.txt``, test scripts
  ``q_test_case_N.q`` ending in ``result:solve[...]; show result;``, expected outputs ``q_exact_ans_test_case_N.txt``
  and an optional reference ``q_solution.q``. A test passes when the text ``show result`` prints matches the expected
  output after normalising whitespace; the comparison happens here, in the caller: the expected text never enters
  the sandbox.
- ``q-expr``: JSONL ``{"task_id", "language": "q", "prompt", "tests": [{"expr", "expected"}]}``; each expression's
  value must match (q's ``~``) the expected q value, compared inside q.
- ``q-humaneval``: KX's q-evaluation-harness Q-HumanEval JSONL (``prompt``, ``tests`` as a Python
  ``check(candidate)``, ``entry_point``, ``test_setup_code``); the candidate is the q function loaded into PyKX and
  called from Python, so it needs PyKX able to run q (a licensed PyKX).

How a q test runs (one sandbox program per MSML test script, one per q-expr problem; all in parallel): the sandboxed
Python side (``sandbox_main``, trusted) writes the program to ``qrl_program.q`` and starts a fresh ``q`` on a script
that loads it, evaluates the test and saves the value with ``set``. When that q process has ended, and every process
it left behind has been killed, a second fresh q process, which runs no code of the program, reads the saved value
back and prints it with ``show`` (MSML) or matches it with the expected value (q-expr) between markers; only that
text reaches the caller, over the sandbox's report channel. So whatever the program prints, or however it exits, it
cannot stand in for ``show result``: its only way to a verdict is the value it leaves, as if ``solve`` returned it.

Modules: formats (the three forms and their tests), syntax (reading q text), extraction (q code in answers), install
(finding q and PyKX), scripts (the q scripts a test runs), executor (the caller's side), runner (inside the sandbox).
No torch here: the scorer's command line imports this package.
"""

from qrl.languages.q.executor import QExecutor
from qrl.languages.q.extraction import strip_prose
from qrl.languages.q.formats import (
    ExprTest,
    ScriptTest,
    detect,
    load_msml,
    normalise_output,
    parse_q_expr,
    parse_q_humaneval,
    q_plain,
)
from qrl.languages.q.install import (
    PYKX_MISSING,
    PYKX_UNLICENSED,
    Q_NOT_FOUND,
    QInstall,
    check_pykx,
    find_q,
    pykx_env,
    pykx_folder,
    pykx_program,
    smoke_test,
)
from qrl.languages.q.runner import sandbox_main
from qrl.languages.q.scripts import between_markers, main_script, match_script, q_string, show_script
from qrl.problems import register_executor, register_format, register_language

__all__ = ["PYKX_MISSING", "PYKX_UNLICENSED", "Q_NOT_FOUND", "ExprTest", "QExecutor", "QInstall", "ScriptTest",
           "between_markers", "check_pykx", "detect", "find_q", "load_msml", "main_script", "match_script",
           "normalise_output", "parse_q_expr", "parse_q_humaneval", "pykx_env", "pykx_folder", "pykx_program",
           "q_plain", "q_string", "sandbox_main", "show_script", "smoke_test", "strip_prose"]  # fmt: skip

register_format("msml", load_folder=load_msml)
register_format("q-expr", parse=parse_q_expr, detect=detect)
register_format("q-humaneval", parse=parse_q_humaneval, detect=detect)
register_language("q", tags={"q", "k", "kdb", "kdb+", "q/kdb+"}, strip_prose=strip_prose)
register_executor("q", QExecutor())
