"""The emulated CUDA runtime's own self-test (csrc/emu/emu_selftest.cpp): barriers, shared
memory, atomics, 2-D blocks, divergence detection, exception propagation, bad launches."""

import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
COMPILER = shutil.which("c++") or shutil.which("g++")


@pytest.mark.skipif(COMPILER is None, reason="no C++ compiler on the PATH")
def test_emulator_selftest(tmp_path):
    exe = tmp_path / "emu_selftest"
    subprocess.run([COMPILER, "-std=c++20", "-O2", "-pthread", f"-I{CSRC}",
                    str(CSRC / "emu" / "emu_runtime.cpp"), str(CSRC / "emu" / "emu_selftest.cpp"),
                    "-o", str(exe)], check=True, capture_output=True, text=True)
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout, result.stdout
