import pytest
import torch

import grokfast

_available = grokfast.backends()
# Every CPU kernel variant this machine can run (avx512, avx2, baseline on an AVX-512 x86-64).
CPU_ISAS = _available["cpu_isas_supported"]
BACKENDS = ([f"cpu-{isa}" for isa in CPU_ISAS] + ["cuda-emulated"]
            + (["cuda"] if _available["cuda"] else []))


@pytest.fixture(params=CPU_ISAS)
def cpu_isa(request):
    """Runs the test with each CPU kernel variant in turn; yields its name."""
    previous = grokfast.backends()["cpu_isa"]
    grokfast.set_cpu_isa(request.param)
    yield request.param
    grokfast.set_cpu_isa(previous)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every backend usable here: the CPU kernels in each variant this machine can run, the
    emulated CUDA kernel, and real CUDA with a GPU. Yields the backend's name for the ops."""
    if not request.param.startswith("cpu-"):
        yield request.param
        return
    previous = grokfast.backends()["cpu_isa"]
    grokfast.set_cpu_isa(request.param.removeprefix("cpu-"))
    yield "cpu"
    grokfast.set_cpu_isa(previous)


def device_of(backend: str) -> torch.device:
    return torch.device("cuda" if backend == "cuda" else "cpu")
