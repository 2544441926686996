"""Where problem formats, languages and executors register: one table of each, filled by the modules of this package
for Python and by ``qrl.languages`` for the others. It imports no format, language or executor itself, so any of
them can register here without an import circle."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qrl.data.records import Record, UserError
from qrl.problems.types import Executor, Problem

FORMATS: list[str] = []  # in the order they registered; extended in place, so every importer sees the new ones
EXECUTORS: dict[str, Executor] = {}  # by Problem.language

_PARSERS: dict[str, Callable[[Record], Problem]] = {}
_DETECTORS: list[Callable[[dict], str | None]] = []
_FOLDER_LOADERS: dict[str, Callable[[Path], list[Problem] | None]] = {}
_LANGUAGE_TAGS: dict[str, set[str]] = {}
_PROSE_STRIPPERS: dict[str, Callable[[str, str | None], str]] = {}


def register_format(
    name: str,
    parse: Callable[[Record], Problem] | None = None,
    detect: Callable[[dict], str | None] | None = None,
    load_folder: Callable[[Path], list[Problem] | None] | None = None,
) -> None:
    """Add a problem format: ``parse`` reads one record (with ``detect`` telling its records apart, checked before
    the built-in rules), or ``load_folder`` reads a folder layout (None when the folder is not one)."""
    if name not in FORMATS:
        FORMATS.append(name)
    if parse is not None:
        _PARSERS[name] = parse
    if detect is not None and detect not in _DETECTORS:
        _DETECTORS.append(detect)
    if load_folder is not None:
        _FOLDER_LOADERS[name] = load_folder


def register_language(
    name: str, tags: set[str] | None = None, strip_prose: Callable[[str, str | None], str] | None = None
) -> None:
    """Fence tags that mark a language's code blocks, and how to find its code in an answer without fences."""
    if tags is not None:
        _LANGUAGE_TAGS[name] = set(tags)
    if strip_prose is not None:
        _PROSE_STRIPPERS[name] = strip_prose


def register_executor(language: str, executor: Executor) -> None:
    """The executor that runs and judges the problems of ``language``."""
    EXECUTORS[language] = executor


def parser(name: str) -> Callable[[Record], Problem]:
    """The record parser of format ``name`` (KeyError for a format that reads folders only)."""
    return _PARSERS[name]


def detectors() -> list[Callable[[dict], str | None]]:
    """The registered formats' detectors, in the order they registered."""
    return list(_DETECTORS)


def folder_loaders() -> dict[str, Callable[[Path], list[Problem] | None]]:
    """The formats that read a folder layout (one folder per problem), by name."""
    return dict(_FOLDER_LOADERS)


def language_tags(language: str) -> set[str]:
    """The fence tags of ``language``'s code blocks (its own name when none registered)."""
    return _LANGUAGE_TAGS.get(language, {language})


def prose_stripper(language: str) -> Callable[[str, str | None], str] | None:
    """How to find ``language``'s code in an answer without fences; None: the answer, stripped, is the code."""
    return _PROSE_STRIPPERS.get(language)


def executor_for(problem: Problem) -> Executor:
    """The executor of the problem's language; UserError for a language none registered."""
    try:
        return EXECUTORS[problem.language]
    except KeyError:
        raise UserError(f"{problem.where}: no executor for language {problem.language!r} yet") from None


def configure_executors(**options: Any) -> None:
    """Hand run options (say ``q_binary``) to every executor that takes options."""
    for executor in EXECUTORS.values():
        configure = getattr(executor, "configure", None)
        if configure is not None:
            configure(**options)


def check_executors(problems: Sequence[Problem]) -> None:
    """Raise UserError now, at start, if some of these problems cannot run here (say, no q interpreter)."""
    for language in sorted({p.language for p in problems}):
        check = getattr(EXECUTORS.get(language), "check", None)
        if check is not None:
            check([p for p in problems if p.language == language])


def sandbox_paths(languages: set[str] | None = None) -> list[str]:
    """Folders the executors of these languages (default: all) need readable inside the sandbox."""
    paths: set[str] = set()
    for language, executor in EXECUTORS.items():
        wanted = getattr(executor, "sandbox_paths", None)
        if wanted is not None and (languages is None or language in languages):
            paths.update(wanted())
    return sorted(paths)


def judging_modules() -> list[str]:
    """The loaded modules whose code decides a verdict: this package's and the package of each executor's class.
    A cache of verdicts keys on their text: a verdict reached by other code is not this code's."""
    packages = {__name__.rsplit(".", 1)[0], *(type(e).__module__.rsplit(".", 1)[0] for e in EXECUTORS.values())}
    return sorted(name for name in list(sys.modules) if name in packages or name.rsplit(".", 1)[0] in packages)
