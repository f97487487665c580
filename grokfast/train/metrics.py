"""metrics.jsonl: one JSON object per line, appended whole; readers skip a torn last line."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

from grokfast.train.checkpoint import atomic_write_text

PathLike = Union[str, os.PathLike]


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def read_metrics(path: PathLike) -> list[dict[str, Any]]:
    """All complete records of a metrics file (a torn or unparsable last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # the last line of an interrupted append
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
    return records


class MetricsWriter:
    """Appends records to a jsonl file, one ``write`` of a whole line each, flushed and synced.

    ``keep`` (optional) filters the records already in the file when the writer opens it: the
    file is rewritten atomically with the kept ones (resuming drops epochs after the checkpoint
    and any torn line).
    """

    def __init__(self, path: PathLike, keep: Optional[Callable[[dict], bool]] = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existing = read_metrics(self.path)
        kept = [r for r in existing if keep is None or keep(r)]
        if self.path.exists() or kept:
            atomic_write_text(self.path, "".join(self._line(r) for r in kept))
        self.records: list[dict[str, Any]] = kept

    @staticmethod
    def _line(record: dict[str, Any]) -> str:
        return json.dumps(_clean(record), allow_nan=False) + "\n"

    def write(self, record: dict[str, Any]) -> None:
        line = self._line(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records.append(json.loads(line))
