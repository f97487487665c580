"""Which instruction sets a benchmark runs with, for grokfast and for its peers.

Import this module first in a bench script (before torch, numpy, numba or scikit-learn): it
reads `--isa` and `--peers-native` from sys.argv at import time and, for `--isa avx2` or
`--isa baseline`, sets the environment variables that cap the peers at that level, so the run
emulates a machine without AVX-512 (or without AVX) for every implementation in it. The
libraries read these variables once, when they load, hence the import-time parse; the script's
own argparse still declares the options (`add_isa_argument`) and `select_isa` checks that both
parses agree.

    --isa auto|avx512|avx2|baseline   grokfast's kernel variant (grokfast.set_cpu_isa); peers
                                      capped to the same level for avx2 and baseline
    --peers-native                    leave the peers uncapped
    --device cuda                     no CPU capping (the peers run on the GPU)

What each variable does, checked on an AMD EPYC Zen 4 (AVX-512), torch 2.13 (MKL 2024.2,
oneDNN 3.12), numpy 2.4 (OpenBLAS 0.3.31), numba 0.68:

- ATEN_CPU_CAPABILITY: torch's own vectorized kernels (tanh, add, ...);
  torch.backends.cpu.get_cpu_capability() reads AVX2 / DEFAULT.
- ONEDNN_MAX_CPU_ISA: oneDNN (torch's mkldnn ops); ONEDNN_VERBOSE=1 reads "isa:Intel AVX2" /
  "isa:Intel SSE4.1".
- MKL_ENABLE_INSTRUCTIONS: MKL (torch's matmul). Honoured on Intel CPUs only: on AMD, MKL
  ignores it (and MKL_CBWR=AVX2 / SSE4_2) and runs its AVX2 code whatever is asked, so the
  avx2 cap holds there anyway; for baseline on non-Intel CPUs MKL_CBWR=COMPATIBLE is the one
  switch it honours (SSE2 code: torch's 2048^3 matmul, one thread, 93 -> ~33 GFLOP/s).
- OPENBLAS_CORETYPE: OpenBLAS (numpy's and scipy's matmul, hence numba's np.dot);
  threadpoolctl reads architecture Haswell / Nehalem (numpy 2048^3 matmul, one thread,
  100 -> 107 (noise) / 32 GFLOP/s).
- NPY_DISABLE_CPU_FEATURES: numpy's own dispatched loops. numpy >= 2.4 dispatches on the
  groups X86_V3 (AVX2), X86_V4, AVX512_ICL, AVX512_SPR (numpy.show_runtime() lists them under
  not_found once disabled); the baseline X86_V2 cannot be disabled (numpy refuses to import).
  Older numpy knows the single features' names.
- NUMBA_CPU_NAME with NUMBA_CPU_FEATURES="": numba's generated code. NUMBA_CPU_NAME alone does
  not cap anything: numba keeps the host's feature list (+avx512f ...) unless
  NUMBA_CPU_FEATURES is set; with "" LLVM takes the named CPU's features (zmm registers gone
  from the assembly for haswell, ymm too for x86-64).

scikit-learn's compiled code has no switch: its wheels are built for the x86-64 baseline plus
OpenBLAS/scipy, which the variables above cap.
"""

from __future__ import annotations

import os
import platform
import sys

ISAS = ("auto", "avx512", "avx2", "baseline")

# Per level: the variables that cap each peer (see the module docstring for the checks).
_CAPS = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "OPENBLAS_CORETYPE": "Haswell",
        "NUMBA_CPU_NAME": "haswell",
        "NUMBA_CPU_FEATURES": "",
    },
    "baseline": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "OPENBLAS_CORETYPE": "Nehalem",
        "NUMBA_CPU_NAME": "x86-64",  # what grokfast's baseline variant is compiled for
        "NUMBA_CPU_FEATURES": "",
    },
}
_NUMPY_OFF = {  # numpy >= 2.4 names, then older numpy's
    "avx2": ("X86_V4 AVX512_ICL AVX512_SPR",
             "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"),
    "baseline": ("X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
                 "AVX AVX2 FMA3 F16C AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL "
                 "AVX512_ICL AVX512_SPR"),
}
_PEER_MODULES = ("torch", "numpy", "numba", "sklearn", "scipy")

# What was applied at import time (read by select_isa and machine_line).
state = {"isa": "auto", "peers_native": False, "device": "cpu", "capped": {}}


def _cpuinfo(key: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _numpy_is_new() -> bool:
    from importlib.metadata import PackageNotFoundError, version
    try:
        major, minor = (int(v) for v in version("numpy").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return True
    return (major, minor) >= (2, 4)


def cap_peers(isa: str) -> dict[str, str]:
    """Set the variables that cap the peers at `isa` ("avx2" or "baseline"; others: nothing).
    Must run before any peer library is imported; returns what it set."""
    if isa not in _CAPS or platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    loaded = [m for m in _PEER_MODULES if m in sys.modules]
    if loaded:
        raise RuntimeError(f"cap_peers({isa!r}) after {loaded} were imported: import _machine "
                           "first in the script")
    env = dict(_CAPS[isa])
    env["NPY_DISABLE_CPU_FEATURES"] = _NUMPY_OFF[isa][0 if _numpy_is_new() else 1]
    if isa == "baseline" and _cpuinfo("vendor_id") not in (None, "GenuineIntel"):
        env["MKL_CBWR"] = "COMPATIBLE"  # MKL on AMD ignores MKL_ENABLE_INSTRUCTIONS
    os.environ.update(env)
    return env


def _apply_from_argv(argv: list[str]) -> None:
    """The early parse: bad values are left for the script's argparse to report."""
    def value(flag: str) -> str | None:
        for i, a in enumerate(argv):
            if a == flag and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(flag + "="):
                return a.split("=", 1)[1]
        return None
    isa = value("--isa") or "auto"
    state.update(isa=isa, peers_native="--peers-native" in argv,
                 device=(value("--device") or "cpu").split(":")[0])
    if not state["peers_native"] and state["device"] == "cpu":
        state["capped"] = cap_peers(isa)


def add_isa_argument(parser) -> None:
    parser.add_argument("--isa", choices=ISAS, default="auto",
                        help="grokfast's CPU kernel variant; avx2 and baseline also cap torch, "
                             "numpy/OpenBLAS, numba to that level (default: auto, all native)")
    parser.add_argument("--peers-native", action="store_true",
                        help="with --isa avx2/baseline: leave the peers uncapped")


def select_isa(args) -> str:
    """grokfast.set_cpu_isa(args.isa); returns the variant in use."""
    if args.isa != state["isa"] or args.peers_native != state["peers_native"]:
        raise SystemExit("--isa / --peers-native: the early parse in bench/_machine.py read "
                         f"{state['isa']!r}, the script's {args.isa!r}: pass them as "
                         "separate options (--isa avx2)")
    import grokfast
    try:
        return grokfast.set_cpu_isa(args.isa)
    except ValueError as e:
        raise SystemExit(f"--isa {args.isa}: {e}")


def cpu_model() -> str:
    return (_cpuinfo("model name") or platform.processor() or platform.machine()
            or "unknown CPU")


def machine_line(device: str = "cpu") -> str:
    """One line: the machine, grokfast's variant, torch's CPU capability, the peers' caps."""
    import grokfast
    import torch
    b = grokfast.backends()
    cpu = f"{cpu_model()}, {os.cpu_count()} cores"
    if device.startswith("cuda") and torch.cuda.is_available():
        cpu = f"{torch.cuda.get_device_name()} + {cpu}"
    parts = [f"Machine: {cpu}",
             f"grokfast {grokfast.__version__} CPU variant {b.get('cpu_isa')} "
             f"(--isa {state['isa']}; this CPU runs {'/'.join(b.get('cpu_isas_supported', []))})",
             f"torch {torch.__version__} CPU capability "
             f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"]
    if state["capped"]:
        extra = ""
        try:
            from threadpoolctl import threadpool_info
            archs = sorted({i.get("architecture") for i in threadpool_info()
                            if i.get("internal_api") == "openblas"} - {None})
            if archs:
                extra = f", OpenBLAS {'/'.join(archs)}"
        except ImportError:
            pass
        parts.append(f"peers capped to {state['isa']} (torch/MKL/oneDNN, numpy{extra}, "
                     f"numba {state['capped']['NUMBA_CPU_NAME']})")
    elif state["isa"] in ("avx2", "baseline"):
        why = ("--peers-native" if state["peers_native"] else
               "CUDA run" if state["device"] != "cpu" else "not an x86-64 CPU")
        parts.append(f"peers native ({why})")
    else:
        parts.append("peers native")
    return "; ".join(parts)


_apply_from_argv(sys.argv[1:])
