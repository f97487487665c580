"""Loading of the compiled extension, with an error that says how to rebuild it."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

REBUILD_HINT = (
    "Rebuild it from the source tree with `pip install --no-build-isolation --force-reinstall "
    "--no-deps .` (or `pip install .`); GROKFAST_CUDA=OFF skips the CUDA kernels."
)


class ExtensionUnavailableError(ImportError):
    """The compiled kernels (grokfast._C) are missing or broken."""


@functools.lru_cache(maxsize=None)
def _load() -> ModuleType:
    try:
        return importlib.import_module("grokfast._C")
    except ImportError as exc:  # missing file, wrong ABI, unresolved symbol
        raise ExtensionUnavailableError(
            f"grokfast's compiled extension grokfast._C could not be loaded ({exc}). {REBUILD_HINT}"
        ) from exc


def ext() -> ModuleType:
    """The compiled extension; raises ExtensionUnavailableError with rebuild instructions."""
    return _load()


def backends() -> dict:
    """What was compiled into this install and what is usable on this machine.

    Keys: ``cpu`` and ``cuda_emulated`` (the CUDA kernels run on host threads, for tests),
    ``cuda_compiled`` (CUDA kernels were built), ``cuda`` (built and a GPU is visible),
    ``cuda_devices`` (number of visible GPUs) and ``error`` (why the extension failed to
    load, else None).
    """
    try:
        c = ext()
    except ExtensionUnavailableError as exc:
        return {"cpu": False, "cuda": False, "cuda_compiled": False, "cuda_emulated": False,
                "cuda_devices": 0, "error": str(exc)}
    devices = int(c.cuda_device_count()) if c.cuda_compiled else 0
    return {"cpu": True, "cuda": bool(c.cuda_compiled and devices > 0),
            "cuda_compiled": bool(c.cuda_compiled), "cuda_emulated": True,
            "cuda_devices": devices, "error": None}
