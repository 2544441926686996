"""Problems with tests, in four formats, and what turns an answer into a verdict: code extraction, the jobs a
program runs as, and the judging of their runs. Languages register their formats and executors here (registry);
the helpers a language's formats and executor build on are exported too. No torch here: the scorer's command line
imports this package.

Modules: types (the data), registry (formats, languages, executors), formats (reading problems), asserts (Python
assert tests), extraction (code from answers), verdicts and comparisons (judging), python (the Python executor),
submissions (the entry points ``prepare``, ``prepare_program`` and ``judge``)."""

from qrl.problems.asserts import free_names
from qrl.problems.extraction import extract_code, program_code
from qrl.problems.formats import (
    detect_format,
    load_completions,
    load_problems,
    parse_humaneval,
    parse_problem,
    record_metadata,
    record_text,
)
from qrl.problems.python import PythonExecutor
from qrl.problems.registry import (
    EXECUTORS,
    FORMATS,
    check_executors,
    configure_executors,
    executor_for,
    judging_modules,
    register_executor,
    register_format,
    register_language,
    sandbox_paths,
)
from qrl.problems.submissions import judge, prepare, prepare_program, text_key
from qrl.problems.types import (
    LIMIT_STATUSES,
    AssertTest,
    CallTest,
    Completion,
    Executor,
    IOTest,
    Job,
    Problem,
    RunOutcome,
    Status,
    Submission,
    Verdict,
)
from qrl.problems.verdicts import decide, early_verdict, outcome_times, report_events

__all__ = ["EXECUTORS", "FORMATS", "LIMIT_STATUSES", "AssertTest", "CallTest", "Completion", "Executor", "IOTest",
           "Job", "Problem", "PythonExecutor", "RunOutcome", "Status", "Submission", "Verdict", "check_executors",
           "configure_executors", "decide", "detect_format", "early_verdict", "executor_for", "extract_code",
           "free_names", "judge", "judging_modules", "load_completions", "load_problems", "outcome_times",
           "parse_humaneval", "parse_problem", "prepare", "prepare_program", "program_code", "record_metadata",
           "record_text", "register_executor", "register_format", "register_language", "report_events", "sandbox_paths",
           "text_key"]  # fmt: skip
