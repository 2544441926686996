"""Code-quality scores on hand-made good and bad programs, Python and Q."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qrl.rewards import quality as code_quality
from qrl.rewards.quality import QualityConfig, QualityError, python_quality, q_quality, quality

ROOT = Path(__file__).resolve().parents[1]

CLEAN = '''"""Vowel counting."""


def count_vowels(text: str) -> int:
    """Return how many characters of text are vowels, in either case."""
    return sum(1 for c in text.lower() if c in "aeiou")
'''

SLOPPY = '''import os, sys
def CountVowels( s ):
  l = 0
  if s == None: return 0
  for i in range(len(s)):
      if s[i] in "aeiouAEIOU": l = l + 1
      else: l = l
  return l
'''

NESTED = '''def decide(a, b, c, d):
    """Fold a, b, c and d into one number."""
    r = 0
    for i in range(a):
        if i % 2:
            if b > i:
                for j in range(b):
                    if c and j > 3 or d:
                        while d > 0:
                            d -= 1
                            if d % 3 == 0 and c:
                                r += 1
                            elif d % 5 == 0 or b:
                                r -= 1
                            else:
                                r += 2
                    elif j == 2:
                        try:
                            r /= j
                        except ZeroDivisionError:
                            r = 0
            elif b < i and c:
                r += 3
        elif a > 3 and (b or c):
            r *= 2
    return r
'''

UNDOCUMENTED = '''def add(a, b):
    return a + b


def scale(values, factor):
    return [v * factor for v in values]
'''


def test_clean_documented_simple_code_scores_high_on_all_three():
    [score] = python_quality([CLEAN])
    assert score.style == 1.0 and score.docs == 1.0 and score.complexity == 1.0 and score.total == 1.0
    assert score.details["violations"] == {} and score.details["public_definitions"] == 1


def test_ruff_violations_lower_style_and_are_named():
    [score] = python_quality([SLOPPY])
    assert score.style < 0.2
    assert {"E401", "E701", "E711", "F401", "N802"} <= set(score.details["violations"])
    assert score.total < python_quality([CLEAN])[0].total


def test_style_formula_is_half_at_the_half_rate():
    # One unused import in a 10-line program: 0.1 violations per line, the default half rate.
    code = "import os\n" + "".join(f"x{i} = {i}\n" for i in range(9))
    [score] = python_quality([code])
    assert score.details["violations"] == {"F401": 1}
    assert score.style == pytest.approx(0.5)
    padded = python_quality(["# padding\n" * 10 + code])[0]
    assert padded.style == score.style  # comment lines do not dilute the violations


def test_noqa_does_not_silence_ruff():
    [score] = python_quality(["# ruff: noqa\nimport os  # noqa: F401\n\nx = 1\n"])
    assert score.details["violations"] == {"F401": 1}


def test_rule_selection_line_length_and_ignore_are_configurable():
    long_line = "x = " + " + ".join(["1"] * 40) + "\n"
    assert python_quality([long_line])[0].details["violations"] == {"E501": 1}
    assert python_quality([long_line], QualityConfig(max_line_length=200))[0].style == 1.0
    assert python_quality([SLOPPY], QualityConfig(ruff_select=["F"]))[0].details["violations"] == {"F401": 2}
    ignored = python_quality([SLOPPY], QualityConfig(ruff_ignore=["E", "N", "SIM"]))[0].details["violations"]
    assert set(ignored) == {"F401"}


def test_unknown_rule_is_one_line_error():
    with pytest.raises(QualityError, match="ruff failed: .*XYZ") as e:
        python_quality([CLEAN], QualityConfig(ruff_select=["XYZ"]))
    assert "\n" not in str(e.value)


def test_undocumented_public_functions_score_low_docs():
    assert python_quality([UNDOCUMENTED])[0].docs == 0.0
    half = UNDOCUMENTED.replace("    return a + b", '    """Return the sum of a and b."""\n    return a + b')
    [score] = python_quality([half])
    assert score.docs == 0.5 and score.details["documented"] == 1 and score.details["public_definitions"] == 2


def test_docstring_length_and_arguments_mentioned_count():
    def doc(text):
        return python_quality([f'def scale(values, factor):\n    """{text}"""\n    return values\n'])[0].docs

    full = doc("Multiply each of values by factor.")
    assert full == 1.0
    assert doc("Multiply each item by a constant.") == 0.75  # no argument named
    assert doc("Multiply values.") < full  # too short, one argument of two
    assert doc("Scale values by factor. " + "More words here. " * 60) < full  # padding does not pay


def test_private_nested_and_dunder_definitions_need_no_docstring():
    code = '''def _helper(x):
    return x


class Box:
    """A box holding value."""

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"Box({self.value})"
'''
    [score] = python_quality([code])
    assert score.docs == 1.0 and score.details["public_definitions"] == 1


def test_deeply_nested_branching_scores_low_complexity():
    [nested, clean] = python_quality([NESTED, CLEAN])
    assert nested.details["max_cc"] >= 15
    assert nested.complexity < 0.5 < clean.complexity
    assert nested.style == 1.0 and nested.docs == 1.0  # complexity alone says what is wrong


def test_unparseable_empty_and_comment_only_code_score_zero():
    bad = python_quality(["def f(:\n    return 1\n", "", "   \n", '"""Only a docstring."""\n# and a comment\n'])
    for score in bad:
        assert (score.style, score.docs, score.complexity, score.total) == (0.0, 0.0, 0.0, 0.0)
    assert bad[0].details["error"].startswith("syntax error")
    assert bad[1].details["error"] == "empty"


def test_line_separators_inside_strings_are_scored_on_cc_alone():
    # ast accepts U+2028 in a string; radon's MI splits lines there and fails, so MI is left out.
    [score] = python_quality(['def f(s):\n    """Split s at line separators."""\n    return s.split("\u2028")\n'])
    assert score.details["mi"] is None and score.complexity == 1.0 and score.total == 1.0
    assert score.details["lines"] == 3


def test_batch_gives_the_same_scores_as_one_at_a_time():
    codes = [CLEAN, SLOPPY, "def f(:\n", NESTED, "", UNDOCUMENTED, CLEAN]
    batched = python_quality(codes)
    assert [s.to_dict() for s in batched] == [python_quality([c])[0].to_dict() for c in codes]
    assert python_quality([]) == []


def test_scores_are_json_serialisable_and_total_is_the_weighted_mean():
    config = QualityConfig(style_weight=2, docs_weight=1, complexity_weight=1)
    for score in python_quality([SLOPPY, NESTED], config) + q_quality(["solve:{x}"], config):
        json.dumps(score.to_dict())
        expected = (2 * score.style + score.docs + score.complexity) / 4
        assert score.total == pytest.approx(expected, abs=1e-3)


def test_bad_config_is_one_line_error():
    with pytest.raises(QualityError, match="--docs_weight must not be negative"):
        python_quality([CLEAN], QualityConfig(docs_weight=-1))
    with pytest.raises(QualityError, match="--cc_good must be less than --cc_bad"):
        q_quality(["solve:{x}"], QualityConfig(cc_good=30))


def test_missing_ruff_is_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ruff.__main__", None)  # import fails as if ruff were not installed
    code_quality.ruff_binary.cache_clear()
    try:
        with pytest.raises(QualityError, match="ruff is not installed"):
            python_quality([CLEAN])
    finally:
        code_quality.ruff_binary.cache_clear()


def test_dispatch_on_language():
    assert quality([CLEAN], "python") == python_quality([CLEAN])
    assert quality(["solve:{x}"], "q") == q_quality(["solve:{x}"])
    with pytest.raises(QualityError, match="no quality scores for language 'rust'"):
        quality([CLEAN], "rust")


def test_import_stays_light():
    probe = "import sys; from qrl.rewards import quality; print([m for m in ('torch', 'transformers', 'trl') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- Q

Q_GOOD = """/ running statistics over a list
/ x: list of numbers
stats:{[x]
  m:avg x;                     / mean
  d:sqrt avg (x-m) xexp 2;     / standard deviation
  `mean`sd!(m;d)}

/ z-scores of x
zscore:{(x-avg x)%dev x}
"""

Q_BAD = """solve:{[x] r:0; i:0; do[count x; if[0=(x i) mod 2; r:r+x i]; i:i+1]; r}
count:{[x] while[x>0; x:x-1]; x}
f:{[a;b] $[a>0; $[b>0; (a+b; {[c] ((c[0]+c[1])*c[2])}[(a;b;(a-b))]); a]; b]}
g:{x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y+x+y}
"""


def test_q_good_beats_bad_on_every_score():
    good, bad = q_quality([Q_GOOD, Q_BAD])
    assert (good.style, good.docs, good.complexity) == (1.0, 1.0, 1.0)
    assert bad.style < 0.2 and bad.docs == 0.0 and bad.complexity == 0.0
    assert bad.details["violations"] == {"explicit-loop": 2, "keyword-assignment": 1, "long-line": 1}
    assert bad.details["max_nesting"] == 8 and good.details["max_nesting"] == 2


@pytest.mark.parametrize("code, error", [
    ("solve:{sum x where 0=x mod 2", "'{' never closed"),
    ("solve:{sum x[1)}", "unmatched ')'"),
    ('solve:{x,"abc}', "unterminated string"),
    ("/ just a comment\n", "no code"),
])
def test_q_unbalanced_or_no_code_scores_zero(code, error):
    [score] = q_quality([code])
    assert score.total == 0.0 and score.style == 0.0 and error in score.details["error"]


def test_q_strings_and_comments_are_not_code():
    codes = [
        'solve:{x,"(/{do[1;2]"}  / brackets, a loop and a slash inside a string',
        '/\nblock comment with an unbalanced [ and do[\n\\\nsolve:{x}',
        'solve:{x,"a\\"b("}',  # an escaped quote does not end the string
        "solve:{sum x}  / trailing ) comment",
        "\\l lib/util.q\nsolve:{x}",  # a system command: the "/" in its path is no comment
    ]
    for score in q_quality(codes):
        assert score.style == 1.0 and score.details["max_nesting"] == 1, score
    assert q_quality(["\\l lib/util.q\nsolve:{x}"])[0].details["documented"] == 0
    assert q_quality(["solve:{+/ x}"])[0].details["max_nesting"] == 1  # " /" after a space is a comment in q
    assert q_quality(["solve:{+/x}"])[0].details["max_nesting"] == 1


def test_q_comments_long_functions_and_whitespace():
    bare, above, trailing = q_quality(["solve:{sum x}", "/ total of x\nsolve:{sum x}", "solve:{sum x}  / total of x"])
    assert bare.docs == 0.0 and above.docs == 1.0 and trailing.docs == 1.0
    padded = q_quality(["/ total\n" * 10 + "solve:{sum x}"])[0]
    assert padded.docs < 1.0  # ten comment lines for one line of code
    long_function = "solve:{[x]\n" + "  x:x+1;\n" * 20 + "  x}\n"
    assert q_quality([long_function])[0].details["violations"] == {"long-function": 1}
    assert q_quality(["solve:{x}  \n"])[0].details["violations"] == {"trailing-whitespace": 1}
    assert q_quality(["solve:{[x;y] x+y}"])[0].details["max_nesting"] == 1  # the parameter list is not nesting
