"""Reading an offline W&B run back: the records of its ``.wandb`` file (wandb 0.31 ships no Python reader of its own;
the file is a LevelDB-style log of ``wandb_internal_pb2.Record`` messages in 32 KiB blocks, after a 7-byte header)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7  # ":W&B", a 2-byte magic number, a version byte
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a .wandb file"
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == _FIRST:
            pending = chunk
            continue
        if kind == _MIDDLE:
            pending += chunk
            continue
        if kind not in (_FULL, _LAST):
            continue
        record = pb.Record()
        record.ParseFromString(pending + chunk if kind == _LAST else chunk)
        yield record


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


class OfflineRun:
    """An offline run's config, history rows and summary, as plain values; its files (media) under ``files``."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.files = self.dir / "files"
        self.config: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        (wandb_file,) = self.dir.glob("*.wandb")
        for r in records(wandb_file):
            kind = r.WhichOneof("record_type")
            if kind == "config":
                self.config.update({_key(u): json.loads(u.value_json) for u in r.config.update})
            elif kind == "history":
                self.history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
            elif kind == "summary":
                self.summary.update({_key(u): json.loads(u.value_json) for u in r.summary.update})

    def tables(self, key: str) -> list[dict[str, Any]]:
        """Every table logged under ``key``, in order, each as {"step": history step, "columns", "data"}."""
        out = []
        for row in self.history:
            path = row.get(f"{key}/path")
            if path is None and isinstance(row.get(key), dict):
                path = row[key].get("path")
            if path:
                table = json.loads((self.files / path).read_text())
                out.append({"step": row.get("train/global_step", row.get("_step")), **table})
        return out
