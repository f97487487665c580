"""Seeds and RNG state capture/restore, so a resumed run draws what an uninterrupted one would."""

from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np
import torch


def derive_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for a named use (init, shuffle, ...) of one run seed."""
    ss = np.random.SeedSequence([int(seed), *stream.encode("utf-8")])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def make_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU torch.Generator seeded with derive_seed(seed, stream)."""
    return torch.Generator().manual_seed(derive_seed(seed, stream))


def capture_rng_state(generators: Mapping[str, torch.Generator] = {}) -> dict[str, Any]:
    """The state of the given generators and of the global RNGs (torch CPU and, once
    initialised, CUDA; Python's random; numpy's legacy global)."""
    state: dict[str, Any] = {
        "generators": {name: g.get_state() for name, g in generators.items()},
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any],
                      generators: Mapping[str, torch.Generator] = {}) -> None:
    """Inverse of capture_rng_state; every generator named here must be in ``state``."""
    saved = state["generators"]
    missing = [name for name in generators if name not in saved]
    if missing:
        raise KeyError(f"state: no saved state for generator(s) {missing}")
    for name, g in generators.items():
        g.set_state(saved[name])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
