"""Calibrations kept between runs: a reference solution's verdict, stored in the user's cache so that each reference
runs once per machine rather than once per process. ``default_calibration_cache()`` is the score command's folder.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import math
import os
import sys
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

from qrl.data.records import atomic_write
from qrl.execution import Limits
from qrl.problems import Submission, Verdict, judging_modules
from qrl.rewards.base import STATUSES

CALIBRATION_FORMAT = 1


def default_calibration_cache() -> Path:
    """The score command's calibration folder, in the user's cache: ``$QRL_CACHE/calibration``, else
    ``$XDG_CACHE_HOME/q-rl/calibration``, else ``~/.cache/q-rl/calibration``. Never the project or /tmp."""
    if os.environ.get("QRL_CACHE"):
        base = Path(os.environ["QRL_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        base = Path(os.environ["XDG_CACHE_HOME"]) / "q-rl"
    else:
        base = Path.home() / ".cache" / "q-rl"
    return base / "calibration"


@functools.cache
def _environment_key() -> str:
    """What decides a reference's verdict and CPU time besides the problem and the limits: the machine (host name and
    CPU model: CPU seconds differ between machines), the Python, and the code that runs and judges programs."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    parts = [os.uname().nodename, cpu, sys.version, sys.executable]
    execution = [f"qrl.execution.{m}" for m in ("harness", "sandbox", "server", "accounting", "filesystem", "kernel")]
    for name in (*execution, *judging_modules()):
        parts.append(hashlib.sha256(Path(importlib.import_module(name).__file__ or "").read_bytes()).hexdigest())
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _canonical(value: Any) -> str:
    """Test data as text that is the same in every process: no object addresses (a bare ``object()`` sentinel says
    "no value"), sets in a sorted order whatever the hash seed."""
    if type(value) is object:
        return "<none>"
    if is_dataclass(value) and not isinstance(value, type):
        inner = ", ".join(f"{f.name}={_canonical(getattr(value, f.name))}" for f in fields(value))
        return f"{type(value).__name__}({inner})"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__}[{', '.join(map(_canonical, value))}]"
    if isinstance(value, dict):
        return "dict{" + ", ".join(f"{_canonical(k)}: {_canonical(v)}" for k, v in value.items()) + "}"
    if isinstance(value, set | frozenset):
        return f"{type(value).__name__}{{{', '.join(sorted(map(_canonical, value)))}}}"
    return f"{type(value).__name__}:{value!r}"


def checksum(key: str, verdict: dict[str, Any]) -> str:
    """What a calibration file stores beside its verdict: a file whose content was changed no longer matches it."""
    return hashlib.sha256(json.dumps([key, verdict], sort_keys=True).encode()).hexdigest()


def _stored_verdict(data: Any) -> Verdict | None:
    """A verdict from its stored form, or None unless every field is there with its exact type."""
    types = {"status": str, "tests_passed": int, "tests_total": int, "cpu_time": float, "wall_time": float,
             "detail": str, "same_value": bool}  # fmt: skip
    if not isinstance(data, dict) or set(data) != {f.name for f in fields(Verdict)} or set(data) != set(types):
        return None
    for name, kind in types.items():
        value = data[name]
        if kind is float and type(value) is int:  # JSON writes a whole float as one
            data = {**data, name: float(value)}
        elif type(value) is not kind:
            return None
    if data["status"] not in STATUSES or data["status"] == "infra_error":
        return None
    if not all(math.isfinite(data[t]) and data[t] >= 0 for t in ("cpu_time", "wall_time")):
        return None
    return Verdict(**data)


class CalibrationCache:
    """Reference verdicts kept between runs, so that a problem's reference runs once per machine, not once per
    process. One file per calibration, named by a hash of everything that decides it; written atomically by the
    scorer alone, in the user's cache (mode 700), which programs under test cannot write. A file that is damaged,
    or whose content does not match its name, is ignored: the reference runs again and the file is rewritten."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def key(self, reference: Submission, limits: Limits) -> str:
        """The normalised reference program, its tests (what the sandbox runs and the expected values the caller
        keeps), the limits it runs under (the timeout among them), and the environment (machine, Python, toolkit)."""
        problem = reference.problem
        parts = [
            CALIBRATION_FORMAT, reference.key, problem.language, problem.entry_point, _canonical(problem.setup),
            _canonical(problem.tests), problem.test_script, [[j.source, j.stdin.hex()] for j in reference.jobs],
            reference.syntax_error, asdict(limits), _environment_key(),
        ]  # fmt: skip
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def prepared(self) -> Path:
        """The folder, made (mode 700) if it can be: it must exist for the sandbox to hide it from programs, should
        it lie where they can look."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            pass
        return self.folder

    def load(self, key: str) -> Verdict | None:
        """The stored verdict, or None: missing, unreadable, damaged or not this key's."""
        try:
            data = json.loads(self.path(key).read_text(encoding="utf-8"))
            if data["format"] != CALIBRATION_FORMAT or data["key"] != key:
                return None
            if data["checksum"] != checksum(key, data["verdict"]):
                return None
            return _stored_verdict(data["verdict"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def store(self, key: str, task_id: str, verdict: Verdict) -> None:
        """Write one calibration; a folder that cannot be written costs only the next run's reference runs."""
        stored = asdict(verdict)
        record = {"format": CALIBRATION_FORMAT, "key": key, "task_id": task_id, "verdict": stored,
                  "checksum": checksum(key, stored)}  # fmt: skip
        try:
            atomic_write(self.prepared() / f"{key}.json", json.dumps(record) + "\n")
        except OSError:
            pass
