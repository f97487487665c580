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
    ``cuda_devices`` (number of visible GPUs), ``cpu_isa`` (the CPU kernels' variant in use:
    ``avx512``, ``avx2``, ``baseline`` or ``neon``), ``cpu_isas_compiled`` and
    ``cpu_isas_supported`` (variants built, and those this CPU can run, best first) and
    ``error`` (why the extension failed to load or ``GROKFAST_CPU_ISA`` is unusable, else None).
    """
    try:
        c = ext()
    except ExtensionUnavailableError as exc:
        return {"cpu": False, "cuda": False, "cuda_compiled": False, "cuda_emulated": False,
                "cuda_devices": 0, "cpu_isa": None, "cpu_isas_compiled": [],
                "cpu_isas_supported": [], "error": str(exc)}
    devices = int(c.cuda_device_count()) if c.cuda_compiled else 0
    try:
        isa, error = str(c.cpu_isa()), None
    except ValueError as exc:  # GROKFAST_CPU_ISA names a variant this CPU or build lacks
        isa, error = None, str(exc)
    return {"cpu": isa is not None, "cuda": bool(c.cuda_compiled and devices > 0),
            "cuda_compiled": bool(c.cuda_compiled), "cuda_emulated": True,
            "cuda_devices": devices, "cpu_isa": isa,
            "cpu_isas_compiled": list(c.cpu_isas_compiled()),
            "cpu_isas_supported": list(c.cpu_isas_supported()), "error": error}


def set_cpu_isa(isa: str) -> str:
    """Runs the CPU kernels' ``isa`` variant from now on (every thread) and returns its name.

    ``"auto"`` picks the best variant this CPU supports, as at start-up; ``"avx512"``,
    ``"avx2"``, ``"baseline"`` (x86-64) or ``"neon"`` (Arm) force one, for comparisons and
    tests. The environment variable ``GROKFAST_CPU_ISA`` sets the start-up choice the same way.
    Raises ValueError naming the variants this CPU supports when it cannot run ``isa``.
    """
    if not isinstance(isa, str):
        raise TypeError(f"isa: expected a str such as 'auto' or 'avx2', got {type(isa).__name__}")
    c = ext()
    c.set_cpu_isa(isa)
    return str(c.cpu_isa())
