"""Comparing a program's values with the expected ones, by kind: a bool is never a number, an int expected needs
an int where JSON data is compared, floats compare within a tolerance; no user-defined ``__eq__`` runs."""

from __future__ import annotations

import json
import math
from typing import Any


def plain_equal(actual: Any, expected: Any) -> bool:
    """An assert's ``==`` as Python has it for numbers (``240.0 == 240``: the datasets' references rely on it), with
    no tolerance; but a bool is never a number here."""
    return _equal(actual, expected, 0.0, exact_ints=False)


def _equal(actual: Any, expected: Any, tol: float, exact_ints: bool = True) -> bool:
    """Equal, and of the same kind: a bool needs a bool (never a number), and with ``exact_ints`` an int expected
    needs an int. A float expected takes a float or an int within ``tol`` (relative or absolute; 0: exactly equal).
    Set elements and dict keys compare exactly, by the same kinds. Both sides are exact builtin types: no
    user-defined ``__eq__`` runs."""
    try:
        return _equal_at(actual, expected, tol, exact_ints)
    except (RecursionError, MemoryError):
        return False


def _equal_at(actual: Any, expected: Any, tol: float, exact_ints: bool) -> bool:
    kind = type(expected)
    if kind is float:
        return type(actual) in (int, float) and _close(actual, expected, tol)
    if kind is int and not exact_ints:
        return type(actual) in (int, float) and actual == expected  # Python compares them exactly, any size
    if kind in (set, frozenset):
        return type(actual) in (set, frozenset) and _typed_set(actual, exact_ints) == _typed_set(expected, exact_ints)
    if type(actual) is not kind:
        return False
    if kind in (list, tuple):
        return len(actual) == len(expected) and all(
            _equal_at(a, e, tol, exact_ints) for a, e in zip(actual, expected, strict=True)
        )
    if kind is dict:
        got = {_typed(k, exact_ints): v for k, v in actual.items()}
        wanted = {_typed(k, exact_ints): v for k, v in expected.items()}
        return got.keys() == wanted.keys() and all(_equal_at(got[k], wanted[k], tol, exact_ints) for k in wanted)
    return bool(actual == expected)  # int, bool, str, bytes, complex, None


def _close(actual: float, expected: float, tol: float) -> bool:
    if math.isnan(expected):
        return type(actual) is float and math.isnan(actual)
    if tol == 0 or math.isinf(expected):
        return actual == expected  # Python compares an int and a float exactly, whatever their size
    try:
        value = float(actual)
    except OverflowError:  # an int beyond any float: not close to a finite one
        return False
    return math.isclose(value, expected, rel_tol=tol, abs_tol=tol)


def _typed(value: Any, exact_ints: bool) -> Any:
    """A hashable form that tells True from 1, and (with ``exact_ints``) 1 from 1.0: for set elements, dict keys."""
    kind = type(value)
    if kind is tuple:
        return ("tuple", tuple(_typed(v, exact_ints) for v in value))
    if kind is frozenset:
        return ("frozenset", _typed_set(value, exact_ints))
    if kind in (int, float) and not exact_ints:
        return ("number", value)
    return (kind.__name__, value)


def _typed_set(value: set | frozenset, exact_ints: bool) -> frozenset:
    return frozenset(_typed(v, exact_ints) for v in value)


_JSON_KEY = {True: "true", False: "false", None: "null"}


def as_json(value: Any) -> Any:
    """The value as ``json.loads(json.dumps(value))`` would give it back: tuples become lists, keys strings."""
    if type(value) in (list, tuple):
        return [as_json(v) for v in value]
    if type(value) is dict:
        out = {}
        for k, v in value.items():
            if type(k) in (bool, type(None)):
                k = _JSON_KEY[k]
            elif type(k) in (int, float):
                k = _json_key(k)
            out[k] = as_json(v)
        return out
    return value


def _json_key(key: float) -> str:
    try:
        return json.dumps(key)
    except ValueError:  # an int of over 4300 digits: a key no JSON file can hold
        return f"\0int {hex(key)}"


def json_equal(actual: Any, expected: Any) -> bool:
    """Equal as JSON data, by type (see ``_equal``): an int expected needs an int, a float expected takes a float or
    an int within 1e-6 (relative or absolute); a bool is never a number."""
    return _equal(actual, expected, 1e-6)
