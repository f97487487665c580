import pytest
import torch

import grokfast

_available = grokfast.backends()
BACKENDS = ["cpu", "cuda-emulated"] + (["cuda"] if _available["cuda"] else [])


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every backend usable here: cpu, the emulated CUDA kernel, and real CUDA with a GPU."""
    return request.param


def device_of(backend: str) -> torch.device:
    return torch.device("cuda" if backend == "cuda" else "cpu")
