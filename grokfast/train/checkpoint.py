"""Atomic checkpoint files: write to a temporary file in the same folder, then os.replace."""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

PathLike = Union[str, os.PathLike]
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> None:
    """torch.save ``state`` to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint (tensors, plain Python values)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    # weights_only=False: the state holds RNG states (ByteTensors) and plain dicts, all ours.
    return torch.load(path, map_location=map_location, weights_only=False)


def epoch_checkpoint_path(directory: PathLike, epoch: int) -> Path:
    """checkpoints/epoch_000123.pt: zero-padded so names sort by epoch."""
    return Path(directory) / f"epoch_{epoch:06d}.pt"


def list_checkpoints(directory: PathLike) -> dict[int, Path]:
    """Epoch checkpoints in ``directory`` by epoch, ascending."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    found = {}
    for p in directory.iterdir():
        m = _EPOCH_FILE.match(p.name)
        if m:
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def latest_checkpoint(directory: PathLike) -> Optional[Path]:
    """The epoch checkpoint with the highest epoch, or None."""
    found = list_checkpoints(directory)
    return found[max(found)] if found else None
