"""The CPU kernels' standalone C++ self-test (csrc/cpu_selftest.cpp: every kernel entry point
against plain C++ references), built with the host g++ once per x86-64 level this CPU runs
(baseline, AVX2, AVX-512), and cross-compiled for aarch64 (NEON) and run under qemu-aarch64
when those tools are installed (Debian packages g++-aarch64-linux-gnu and qemu-user)."""

import os
import platform
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import grokfast

CSRC = Path(__file__).resolve().parents[1] / "csrc"
GXX = shutil.which("g++")
CROSS = shutil.which("aarch64-linux-gnu-g++")
QEMU = shutil.which("qemu-aarch64")
X86 = platform.machine() in ("x86_64", "AMD64")

FLAGS = ["-std=c++20", "-O2", "-pthread", "-ffp-contract=fast", f"-I{CSRC}"]
# Slowest first, so the parallel build ends sooner. parallel.cpp has no vector code: compiled
# once per compiler (CMake compiles it for the baseline too); the rest once per variant.
PER_VARIANT = ["rnn/rnn_cpu.cpp", "pairs/pairs_cpu.cpp", "cpu_selftest.cpp", "cpu_isa.cpp"]
SHARED = "parallel.cpp"
# x86-64 levels: variant name (csrc/simd.h), -march, what the CPU must have.
LEVELS = [("baseline", "x86-64", "x86-64"), ("avx2", "x86-64-v3", "AVX2 and FMA (x86-64-v3)"),
          ("avx512", "x86-64-v4", "AVX-512 (x86-64-v4)")]
CROSS_MISSING = ("aarch64-linux-gnu-g++ not found (install the Debian package "
                 "g++-aarch64-linux-gnu; qemu-user to run the result)")
QEMU_MISSING = "qemu-aarch64 not found (install the Debian package qemu-user)"

def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _compile(compiler, flags, source, obj):
    done = _run([compiler, *FLAGS, *flags, "-c", str(CSRC / source), "-o", str(obj)], timeout=900)
    return done.returncode == 0, f"$ {compiler} {' '.join(flags)} -c {source}\n{done.stderr}"


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Every self-test this machine can build, compiled in parallel once for the module:
    {target: (executable or None, log)}, plus "cpu_levels" (the x86-64 levels this CPU runs)."""
    out = tmp_path_factory.mktemp("cpu_selftest")
    # The x86-64 levels this CPU runs, as the extension's dispatcher decides them.
    levels = grokfast.backends()["cpu_isas_supported"] if X86 else []
    targets = {}  # name -> (compiler, compile flags, link flags)
    if GXX:
        # Native builds run under AddressSanitizer where the toolchain has it: an out-of-range
        # read (a lane mask with stray bits) crashes only now and then without it.
        (out / "asan.cpp").write_text("int main() { return 0; }\n")
        asan = ["-fsanitize=address", "-fno-omit-frame-pointer"]
        if _run([GXX, *asan, str(out / "asan.cpp"), "-o", str(out / "asan")], timeout=300).returncode:
            asan = []
        if X86:
            for name, march, _ in LEVELS:
                if name in levels:
                    targets[name] = (GXX, [f"-march={march}", *asan], asan)
        else:
            targets["native"] = (GXX, asan, asan)
    if CROSS:
        targets["aarch64"] = (CROSS, [], ["-static"])  # static: qemu needs no sysroot

    jobs, objects = [], {}
    for compiler in {c for c, _, _ in targets.values()}:
        obj = out / f"parallel.{Path(compiler).name}.o"
        jobs.append((compiler, [], SHARED, obj))
        objects[compiler] = obj
    for source in PER_VARIANT:
        for name, (compiler, flags, _) in targets.items():
            jobs.append((compiler, flags, source, out / f"{Path(source).stem}.{name}.o"))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda j: (j, _compile(*j)), jobs))
    built = {}
    for name, (compiler, flags, link) in targets.items():
        mine = [(ok, log) for (c, f, s, _), (ok, log) in results
                if (c == compiler and f == flags) or s == SHARED and c == compiler]
        log = "\n".join(log for ok, log in mine if not ok or log.count("\n") > 1)
        if not all(ok for ok, _ in mine):
            built[name] = (None, log)
            continue
        exe = out / f"cpu_selftest_{name}"
        objs = [str(out / f"{Path(s).stem}.{name}.o") for s in PER_VARIANT] + [str(objects[compiler])]
        done = _run([compiler, "-pthread", *link, *objs, "-o", str(exe)], timeout=300)
        built[name] = (exe if done.returncode == 0 else None, log + done.stderr)
    built["cpu_levels"] = levels
    return built


def _run_selftest(cmd, variant):
    env = {k: v for k, v in os.environ.items() if k != "GROKFAST_CPU_ISA"}
    done = _run(cmd, timeout=600, env=env)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert " 0 failed" in done.stdout, report
    assert f"kernels built for {variant} " in done.stdout, report
    return report


@pytest.mark.skipif(GXX is None, reason="g++ not found on the PATH")
@pytest.mark.parametrize("variant", [name for name, _, _ in LEVELS] if X86 else ["native"])
def test_selftest_native(builds, variant):
    if X86 and variant not in builds["cpu_levels"]:
        need = next(what for name, _, what in LEVELS if name == variant)
        pytest.skip(f"this CPU lacks {need}, so it cannot run the {variant} variant")
    exe, log = builds[variant]
    assert exe is not None, f"the self-test did not build:\n{log}"
    # Off x86 the flags select the machine's own variant (neon on aarch64, else baseline).
    expected = variant if X86 else ("neon" if platform.machine() in ("aarch64", "arm64") else "baseline")
    _run_selftest([str(exe)], expected)


@pytest.mark.skipif(CROSS is None, reason=CROSS_MISSING)
def test_kernels_cross_compile_for_aarch64(builds):
    exe, log = builds["aarch64"]
    assert exe is not None, f"the CPU kernels do not build for aarch64:\n{log}"


@pytest.mark.skipif(CROSS is None, reason=CROSS_MISSING)
@pytest.mark.skipif(QEMU is None, reason=QEMU_MISSING)
def test_selftest_aarch64_under_qemu(builds):
    exe, log = builds["aarch64"]
    if exe is None:
        pytest.fail(f"the CPU kernels do not build for aarch64:\n{log}")
    _run_selftest([QEMU, str(exe)], "neon")
