"""Reading data files as they are (JSONL, JSON, parquet, or a saved `datasets` folder), and writing them whole.

Every record keeps where it came from (``file:line``), so that a bad record is reported with its file
and line. This module stays free of torch so that the scorer's import path starts fast.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class UserError(Exception):
    """Bad input from the user: the command line prints it as one line, with no traceback. ``every_rank``: every
    rank of a launch raises it alike, so the main process alone says it."""

    def __init__(self, message: str = "", every_rank: bool = False):
        super().__init__(message)
        self.every_rank = every_rank


class DataError(UserError):
    """A data file that cannot be used; the message names the file (and line where there is one)."""


@dataclass
class Record:
    data: dict[str, Any]
    where: str  # "path:line" (JSONL), "path[item]" (JSON, parquet, datasets)


def read_records(path: str | Path) -> list[Record]:
    """Read one data file or a saved `datasets` folder into records."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_saved_dataset(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    raise DataError(f"{path}: unknown data format '{suffix}' (use .jsonl, .json, .parquet or a saved datasets folder)")


def atomic_write(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | Path) -> None:
    """Fail before any work when an output file could not be written (its folder is tried by writing there)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a file")
    probe_folder(path.parent, f"cannot write {path}: its folder")


def probe_folder(folder: str | Path, what: str) -> None:
    """Fail, in one line starting with ``what``, when ``folder`` could not be created or written: tried by making
    it (and the folders above it that are missing) and a file in it, all removed again, so that nothing stays. Asking
    ``os.access`` is not enough: root is granted everything there, /proc and /sys included, where nothing can be
    made. The ranks of a launch probe the same folder at once: a folder another rank made counts as existing, and
    one it removed under this probe is made again."""
    for attempt in range(5):
        try:
            return _probe_once(Path(folder), what)
        except FileNotFoundError as e:  # another rank removed the folder it had made for its own probe, or
            if attempt == 4:  # a folder where none can be made (/proc)
                raise UserError(f"{what} {folder} cannot be created ({e.strerror})") from None


def _probe_once(folder: Path, what: str) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {folder} cannot be created ({existing} is a file, not a folder)")
    missing = [folder, *folder.parents][: len(folder.parts) - len(existing.parts)]
    made: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
                made.append(d)
            except FileExistsError:  # made meanwhile by another rank's probe
                pass
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".qrl-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except FileNotFoundError:
        raise
    except OSError as e:
        verb = "written" if len(made) == len(missing) else "created"
        raise UserError(f"{what} {folder} cannot be {verb} ({e.strerror or type(e).__name__})") from None
    finally:
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                pass


def require_fields(record: Record, fields: Iterable[str]) -> None:
    missing = [f for f in fields if f not in record.data or record.data[f] is None]
    if missing:
        names = ", ".join(map(repr, missing))
        raise DataError(f"{record.where}: missing field{'s' if len(missing) > 1 else ''} {names}")


def read_text(path: Path) -> str:
    """A data file as text; unreadable or non-UTF-8 files become one DataError line."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def _read_jsonl(path: Path) -> list[Record]:
    records = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(data, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(data).__name__}")
        records.append(Record(data, where))
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _read_json(path: Path) -> list[Record]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
    return _records_from_rows(path, data)


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read parquet ({e})") from None
    return _records_from_rows(path, rows)


def _read_saved_dataset(path: Path) -> list[Record]:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError or its own errors for a non-dataset folder
        raise DataError(f"{path}: not a saved datasets folder ({e})") from None
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: a DatasetDict without a 'train' split (has {', '.join(ds)})")
        ds = ds["train"]
    assert isinstance(ds, Dataset)
    return _records_from_rows(path, ds.to_list())


def _records_from_rows(path: Path, rows: list) -> list[Record]:
    records = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}[{i}]: expected an object, got {type(row).__name__}")
        records.append(Record(row, f"{path}[{i}]"))
    if not records:
        raise DataError(f"{path}: no records")
    return records


PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")


def is_messages(value: Any) -> bool:
    """A conversation: a non-empty list of messages, each with a text ``role`` and ``content``."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )


def load_preferences(path: str | Path) -> list[dict[str, Any]]:
    """Preference pairs as TRL's DPOTrainer takes them: plain text or conversational messages, not mixed."""
    rows, form = [], None
    for record in read_records(path):
        require_fields(record, PREFERENCE_FIELDS)
        kinds = {name: _text_or_messages(record, name) for name in PREFERENCE_FIELDS}
        if len(set(kinds.values())) > 1:
            raise DataError(f"{record.where}: prompt, chosen and rejected must all be text or all be messages")
        row_form = "conversational" if "messages" in kinds.values() else "text"
        if form is None:
            form = row_form
        elif row_form != form:
            raise DataError(f"{record.where}: {row_form} pair in a file of {form} pairs")
        rows.append({name: record.data[name] for name in PREFERENCE_FIELDS})
    return rows


def _text_or_messages(record: Record, name: str) -> str:
    value = record.data[name]
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{record.where}: field '{name}' is empty")
        return "text"
    if is_messages(value):
        return "messages"
    raise DataError(f"{record.where}: field '{name}' must be text or a list of {{role, content}} messages")
