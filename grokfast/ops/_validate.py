"""Argument checks shared by the ops: every error names the argument and what was expected."""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

BACKENDS = ("cpu", "cuda", "cuda-emulated")
Named = Union[dict[str, Optional[Tensor]], Iterable[tuple[str, Optional[Tensor]]]]


def as_tensor(name: str, value: Any, *, optional: bool = False) -> Optional[Tensor]:
    if value is None:
        if optional:
            return None
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got None")
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(value).__name__}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_shape(name: str, t: Tensor, expected: Sequence[int], what: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)} ({what}), got {tuple(t.shape)}")


def resolve_backend(backend: Optional[str], device: torch.device, what: str = "tensors") -> str:
    """The backend to run on (default: from the device); `what` names the inputs in errors."""
    if backend is None:
        return "cuda" if device.type == "cuda" else "cpu"
    check_choice("backend", backend, BACKENDS)
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"backend='cuda' needs {what} on a CUDA device, got device {device}")
    if backend != "cuda" and device.type != "cpu":
        raise ValueError(f"backend={backend!r} needs {what} on the CPU, got device {device}")
    return backend


def _pairs(named) -> Iterable[tuple[str, Optional[Tensor]]]:
    return named.items() if isinstance(named, dict) else named


def check_same_device(named: Named, device: torch.device, reference: str = "w_hh") -> None:
    """named: {name: tensor or None} or (name, tensor or None) pairs (cheaper to build)."""
    for name, t in _pairs(named):
        if t is not None and t.device != device:
            raise ValueError(f"{name}: expected a tensor on {device} (where {reference} is), "
                             f"got {t.device}")


def check_dtype(named: Named, dtype: torch.dtype) -> None:
    for name, t in _pairs(named):
        if t is not None and t.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} (the dtype of w_hh), got {t.dtype}")
