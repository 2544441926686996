"""Code-quality scores in [0, 1] for reward functions: style, documentation and complexity.

Python is judged by ruff (style), the ``ast`` module (docstrings) and radon (complexity); Q by a few text
rules that need no q interpreter. ``docs/code_quality.md`` gives every formula and default. This module
stays free of torch, transformers and trl: it is on the scorer's import path, which must start fast.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrl.config.quality_options import QualityConfig, QualityError
from qrl.languages.q import syntax as q_syntax

LANGUAGES = ("python", "q")


@dataclass
class QualityScore:
    """Scores of one program, each in [0, 1]; ``details`` says what they came from (JSON-serialisable)."""

    style: float
    docs: float
    complexity: float
    total: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def quality(codes: list[str], language: str, config: QualityConfig | None = None) -> list[QualityScore]:
    """Score a batch of programs in one language ("python" or "q")."""
    if language == "python":
        return python_quality(codes, config)
    if language == "q":
        return q_quality(codes, config)
    raise QualityError(f"no quality scores for language '{language}' (known: {', '.join(LANGUAGES)})")


def _score(style: float, docs: float, complexity: float, config: QualityConfig, details: dict) -> QualityScore:
    weights = (config.style_weight, config.docs_weight, config.complexity_weight)
    total = (style * weights[0] + docs * weights[1] + complexity * weights[2]) / sum(weights)
    return QualityScore(round(style, 4), round(docs, 4), round(complexity, 4), round(total, 4), details)


def _unusable(reason: str) -> QualityScore:
    """Code that is empty or does not parse earns nothing: there is no program to judge."""
    return QualityScore(0.0, 0.0, 0.0, 0.0, {"error": reason})


def _style_score(violations: int, lines: int, config: QualityConfig) -> float:
    """1 with no violations, 0.5 at ``style_half_rate`` violations per line, towards 0 beyond; never flat.

    ``lines`` leaves out blank and comment-only lines, so that padding with comments does not dilute.
    """
    rate = violations / max(lines, 1)
    return 1.0 / (1.0 + rate / config.style_half_rate)


def _source_lines(code: str) -> list[str]:
    """Lines as Python and q count them: str.splitlines would also break at \f, \x1c-\x1e, \x85 and U+2028."""
    return re.split(r"\r\n|\r|\n", code)


def _ramp(value: float, zero_at: float, one_at: float) -> float:
    """0 at ``zero_at``, 1 at ``one_at``, linear between and flat beyond; either direction."""
    return min(1.0, max(0.0, (value - zero_at) / (one_at - zero_at)))


# ---------------------------------------------------------------- Python


def python_quality(codes: list[str], config: QualityConfig | None = None) -> list[QualityScore]:
    """Score Python programs; ruff runs once for the whole batch, since starting it costs more than linting."""
    config = config or QualityConfig()
    config.validate()
    trees: dict[int, ast.Module] = {}
    results: list[QualityScore | None] = [None] * len(codes)
    for i, code in enumerate(codes):
        if not code.strip():
            results[i] = _unusable("empty")
            continue
        try:
            tree = ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:  # ValueError: null bytes
            results[i] = _unusable(f"syntax error: {e}")
            continue
        statements = tree.body[1:] if ast.get_docstring(tree) is not None else tree.body
        if statements:
            trees[i] = tree
        else:
            results[i] = _unusable("no code (only comments or a docstring)")
    violations = _ruff_violations({i: codes[i] for i in trees}, config)
    for i, tree in trees.items():
        code = codes[i]
        lines = sum(1 for line in _source_lines(code) if line.strip() and not line.lstrip().startswith("#"))
        found = violations.get(i, Counter())
        docs, documented, public = _docs_score(tree, config)
        complexity, max_cc, mi = _complexity_score(tree, code, config)
        details = {"lines": lines, "violations": dict(sorted(found.items())), "public_definitions": public,
                   "documented": documented, "max_cc": max_cc, "mi": None if mi is None else round(mi, 2)}
        results[i] = _score(_style_score(sum(found.values()), lines, config), docs, complexity, config, details)
    return results  # type: ignore[return-value]


@functools.cache
def ruff_binary() -> str:
    """The ruff executable that the installed ``ruff`` package ships, whatever PATH holds."""
    try:
        from ruff.__main__ import find_ruff_bin
    except ImportError:
        raise QualityError("ruff is not installed; Python style scores need it (pip install ruff)") from None
    try:
        return str(find_ruff_bin())
    except FileNotFoundError:
        raise QualityError("the ruff package is installed without its executable; reinstall it (pip install "
                           "--force-reinstall ruff)") from None


def ruff_command(config: QualityConfig) -> list[str]:
    """One ruff invocation, blind to project settings and to ``# noqa`` (a model must not silence its critic)."""
    cmd = [ruff_binary(), "check", "--output-format", "json", "--no-cache", "--isolated", "--exit-zero",
           "--ignore-noqa", "--select", ",".join(config.ruff_select), "--line-length", str(config.max_line_length),
           "--target-version", f"py{sys.version_info.major}{sys.version_info.minor}"]
    if config.ruff_ignore:
        cmd += ["--ignore", ",".join(config.ruff_ignore)]
    return cmd


def _ruff_violations(codes: dict[int, str], config: QualityConfig) -> dict[int, Counter]:
    """Rule codes ruff reports for each program, keyed like ``codes``: each one a file in one folder."""
    if not codes:
        return {}
    with tempfile.TemporaryDirectory(prefix="q-rl-quality-") as tmp:
        names = []
        for i, code in codes.items():
            names.append(f"sample_{i}.py")
            Path(tmp, names[-1]).write_text(code, encoding="utf-8")
        proc = subprocess.run([*ruff_command(config), *names], cwd=tmp, capture_output=True, text=True,
                              check=False)
    if proc.returncode != 0:
        # ruff writes "ruff failed" and then the cause, or a clap error line; keep the line that says why.
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip() not in ("", "ruff failed")]
        raise QualityError(f"ruff failed: {lines[0] if lines else f'exit status {proc.returncode}'}")
    found: dict[int, Counter] = {i: Counter() for i in codes}
    for item in json.loads(proc.stdout or "[]"):
        # ast accepted the program, so a ruff syntax complaint is a disagreement between parsers, not style.
        if item["code"] and item["code"] != "invalid-syntax":
            found[int(Path(item["filename"]).stem.removeprefix("sample_"))][item["code"]] += 1
    return found


def _public_definitions(tree: ast.Module) -> list[tuple[ast.AST, list[str], list[ast.AST]]]:
    """Public top-level functions and classes and public methods of public classes, with their arguments.

    Each entry is (node, argument names, nodes whose docstrings may mention them): a class's arguments are
    its ``__init__``'s, documented either on the class or on ``__init__``.
    """
    found = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            found.append((node, _argument_names(node.args), [node]))
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            init = next((m for m in node.body if isinstance(m, ast.FunctionDef) and m.name == "__init__"), None)
            found.append((node, _argument_names(init.args) if init else [], [node, init] if init else [node]))
            for member in node.body:
                if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)) and not member.name.startswith("_"):
                    found.append((member, _argument_names(member.args), [member]))
    return found


def _argument_names(args: ast.arguments) -> list[str]:
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    return [a.arg for a in every if a is not None and a.arg not in ("self", "cls") and not a.arg.startswith("_")]


def _docs_score(tree: ast.Module, config: QualityConfig) -> tuple[float, int, int]:
    """Mean over public definitions of: 0 without a docstring, else 0.5 + 0.25 length + 0.25 arguments."""
    definitions = _public_definitions(tree)
    if not definitions:
        return 1.0, 0, 0  # nothing public to document
    scores = []
    for node, arguments, holders in definitions:
        docstring = " ".join(filter(None, (ast.get_docstring(h) for h in holders)))  # type: ignore[arg-type]
        if not ast.get_docstring(node):  # type: ignore[arg-type]
            scores.append(0.0)
            continue
        words = len(docstring.split())
        if words < config.docs_min_words:
            length = words / config.docs_min_words
        else:
            length = min(1.0, config.docs_max_words / words)
        mentioned = sum(1 for a in arguments if re.search(rf"\b{re.escape(a)}\b", docstring))
        scores.append(0.5 + 0.25 * length + 0.25 * (mentioned / len(arguments) if arguments else 1.0))
    return sum(scores) / len(scores), sum(1 for s in scores if s > 0), len(scores)


def _complexity_score(tree: ast.Module, code: str, config: QualityConfig) -> tuple[float, int, float | None]:
    """Worst cyclomatic complexity (any function, method, closure or the module body) and radon's MI, blended."""
    try:
        from radon.metrics import mi_visit
        from radon.visitors import ComplexityVisitor, Function
    except ImportError:
        raise QualityError("radon is not installed; Python complexity scores need it (pip install radon)") from None

    visitor = ComplexityVisitor.from_ast(tree)
    units = [visitor.complexity]
    pending = [b for b in visitor.blocks if isinstance(b, Function)]
    while pending:
        block = pending.pop()
        units.append(block.complexity)
        pending.extend(block.closures)
    max_cc = max(units)
    cc_score = _ramp(max_cc, config.cc_bad, config.cc_good)
    try:
        # multi=False: docstrings are judged by the docs score; counting them as comments here would pay twice.
        mi = mi_visit(code, False)
    except SyntaxError:  # radon splits lines at \f or \u2028 inside strings, which ast accepts: CC alone
        return cc_score, max_cc, None
    mi_score = _ramp(mi, config.mi_bad, config.mi_good)
    return (1 - config.mi_share) * cc_score + config.mi_share * mi_score, max_cc, mi


# ---------------------------------------------------------------- Q

# Names q defines itself; assigning one either fails ('assign) or hides the built-in from the reader.
Q_KEYWORDS = frozenset({
    "abs", "acos", "aj", "all", "and", "any", "asc", "asin", "atan", "attr", "avg", "avgs", "bin", "binr",
    "ceiling", "cols", "cor", "cos", "count", "cov", "cross", "csv", "cut", "delete", "deltas", "desc", "dev",
    "differ", "distinct", "div", "do", "dsave", "each", "ej", "ema", "enlist", "eval", "except", "exec",
    "exit", "exp", "fby", "fills", "first", "fkeys", "flip", "floor", "get", "getenv", "group", "gtime",
    "hclose", "hcount", "hdel", "hopen", "hsym", "iasc", "idesc", "if", "ij", "in", "insert", "inter", "inv",
    "key", "keys", "last", "like", "lj", "load", "log", "lower", "lsq", "ltime", "ltrim", "mavg", "max",
    "maxs", "mcount", "md5", "mdev", "med", "meta", "min", "mins", "mmax", "mmin", "mmu", "mod", "msum",
    "neg", "next", "not", "null", "or", "over", "parse", "peach", "pj", "prd", "prds", "prev", "prior",
    "rand", "rank", "ratios", "raze", "read0", "read1", "reciprocal", "reverse", "rload", "rotate", "rsave",
    "rtrim", "save", "scan", "scov", "sdev", "select", "set", "setenv", "show", "signum", "sin", "sqrt", "ss",
    "ssr", "string", "sublist", "sum", "sums", "sv", "svar", "system", "tables", "tan", "til", "trim", "type",
    "uj", "ungroup", "union", "update", "upper", "upsert", "value", "var", "view", "views", "vs", "wavg",
    "where", "while", "within", "wj", "wsum", "xasc", "xbar", "xcol", "xcols", "xdesc", "xexp", "xgroup",
    "xkey", "xlog", "xprev", "xrank",
})
_Q_LOOP = re.compile(r"(?<![\w.])(do|while)\s*\[")
_Q_ASSIGN = re.compile(r"(?<![\w.`])([A-Za-z]\w*)\s*:")
def q_quality(codes: list[str], config: QualityConfig | None = None) -> list[QualityScore]:
    """Score Q programs with text rules that need no q interpreter (see docs/code_quality.md)."""
    config = config or QualityConfig()
    config.validate()
    return [_q_one(code, config) for code in codes]


def _q_one(code: str, config: QualityConfig) -> QualityScore:
    if not code.strip():
        return _unusable("empty")
    lines, error = q_syntax.scan_lines(_source_lines(code))
    nesting = q_syntax.nesting(lines)
    if error or nesting.error:
        return _unusable(f"syntax error: {error or nesting.error}")
    code_lines = sum(1 for line in lines if line.code.strip())
    if not code_lines:
        return _unusable("no code (only comments)")
    raw_lines = _source_lines(code)
    found: Counter = Counter()
    for raw, line in zip(raw_lines, lines, strict=False):
        found["long-line"] += len(raw) > config.max_line_length
        found["trailing-whitespace"] += raw != raw.rstrip()
        found["explicit-loop"] += len(_Q_LOOP.findall(line.code))
        found["keyword-assignment"] += sum(1 for name in _Q_ASSIGN.findall(line.code) if name in Q_KEYWORDS)
    found["long-function"] = sum(n > config.q_max_function_lines for n in nesting.function_lines)
    found = +found  # drop zero counts
    docs, commented, definitions = _q_comment_score(lines, code_lines, config)
    complexity = _ramp(nesting.max_depth, config.q_nesting_bad, config.q_nesting_good)
    details = {"lines": code_lines, "violations": dict(sorted(found.items())), "public_definitions": definitions,
               "documented": commented, "max_nesting": nesting.max_depth}
    return _score(_style_score(sum(found.values()), code_lines, config), docs, complexity, config, details)


def _q_comment_score(lines: list[q_syntax.Line], code_lines: int, config: QualityConfig) -> tuple[float, int, int]:
    """Comment density against ``q_comment_ratio``, averaged with the share of commented top-level definitions.

    A definition counts as commented with a comment on its first line or on the non-blank line above it.
    Density beyond ``q_comment_max_ratio`` loses credit, so that padding with comments does not pay.
    """
    ratio = sum(1 for line in lines if line.comment) / code_lines
    if ratio > config.q_comment_max_ratio:
        density = config.q_comment_max_ratio / ratio
    else:
        density = min(1.0, ratio / config.q_comment_ratio)
    definitions = commented = 0
    above: q_syntax.Line | None = None
    for line in lines:
        if line.definition:
            definitions += 1
            commented += line.comment or (above is not None and above.comment_only)
        if line.code.strip() or line.comment:
            above = line
    if not definitions:
        return density, 0, 0
    return (density + commented / definitions) / 2, commented, definitions
