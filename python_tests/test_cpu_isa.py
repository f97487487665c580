"""The CPU kernels' instruction-set variants: reporting, forcing, refusing, and running on CPUs
that lack the wider instruction sets (under qemu-x86_64 with an older CPU model)."""

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import grokfast
from grokfast.ops import rnn

HERE = Path(__file__).parent
X86 = platform.machine() in ("x86_64", "AMD64")


def test_backends_report_the_variants():
    info = grokfast.backends()
    assert info["cpu_isa"] == info["cpu_isas_supported"][0]
    assert set(info["cpu_isas_supported"]) <= set(info["cpu_isas_compiled"])
    if X86:  # the default build carries all three x86-64 levels, best first
        assert info["cpu_isas_compiled"] == ["avx512", "avx2", "baseline"]
        assert "baseline" in info["cpu_isas_supported"]


def test_forcing_each_variant(cpu_isa):
    assert grokfast.backends()["cpu_isa"] == cpu_isa
    assert grokfast.set_cpu_isa(cpu_isa) == cpu_isa


def test_auto_is_the_best_supported():
    previous = grokfast.backends()["cpu_isa"]
    try:
        assert grokfast.set_cpu_isa("auto") == grokfast.backends()["cpu_isas_supported"][0]
    finally:
        grokfast.set_cpu_isa(previous)


@pytest.mark.parametrize("name,match", [
    ("sse9", r"isa=sse9: unknown variant \(expected auto, avx512, avx2, baseline or neon\)"),
    ("AVX2", r"unknown variant"),
    ("neon" if X86 else "avx2", r"not compiled into this build; compiled: .*supported here: "),
])
def test_bad_variant_names(name, match):
    before = grokfast.backends()["cpu_isa"]
    with pytest.raises(ValueError, match=match):
        grokfast.set_cpu_isa(name)
    assert grokfast.backends()["cpu_isa"] == before  # unchanged
    with pytest.raises(TypeError, match="isa: expected a str"):
        grokfast.set_cpu_isa(2)


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=HERE, timeout=300)


def test_environment_variable_forces_a_variant():
    isa = grokfast.backends()["cpu_isas_supported"][-1]
    done = _python("import grokfast; print(grokfast.backends()['cpu_isa'])", GROKFAST_CPU_ISA=isa)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [isa]


def test_unusable_environment_variable_is_a_clear_error():
    code = """
import grokfast, torch
info = grokfast.backends()
print(info['cpu'], info['error'])
try:
    grokfast.ops.rnn(torch.zeros(1, 2, dtype=torch.int64), torch.zeros(3, 2), torch.zeros(3, 3))
except ValueError as exc:
    print('raised', exc)
"""
    done = _python(code, GROKFAST_CPU_ISA="avx1024")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("False GROKFAST_CPU_ISA=avx1024: unknown variant"), lines
    assert lines[1].startswith("raised GROKFAST_CPU_ISA=avx1024: unknown variant"), lines


def test_variants_agree_up_to_rounding():
    # Every variant is checked against the reference elsewhere; here they are held against each
    # other at a size where all the blocking paths run (odd H, a partial 6-row block).
    g = torch.Generator().manual_seed(0)
    H, B, T = 101, 17, 300
    x = torch.randint(0, 2, (B, T), generator=g)
    w = [torch.randn(H, 2, generator=g), torch.randn(H, H, generator=g) * 0.9 / H ** 0.5,
         torch.randn(H, generator=g) * 0.1, None, torch.randn(2, H, generator=g) / H ** 0.5,
         torch.zeros(2)]
    previous = grokfast.backends()["cpu_isa"]
    outs = {}
    try:
        for isa in grokfast.backends()["cpu_isas_supported"]:
            grokfast.set_cpu_isa(isa)
            outs[isa] = rnn(x, *w, activation="tanh", hidden="all")
    finally:
        grokfast.set_cpu_isa(previous)
    first = next(iter(outs.values()))
    for isa, out in outs.items():
        torch.testing.assert_close(out.h, first.h, atol=1e-5, rtol=1e-5, msg=isa)
        torch.testing.assert_close(out.y, first.y, atol=1e-5, rtol=1e-5, msg=isa)


# qemu-x86_64 runs this process's Python on an emulated CPU model: Westmere has SSE4.2 and no
# AVX, Haswell has AVX2 and FMA and no AVX-512.
QEMU_CPUS = [("Westmere", ["baseline"], ["avx2", "avx512"]),
             ("Haswell", ["avx2", "baseline"], ["avx512"])]


@pytest.mark.skipif(not X86, reason="x86-64 only: emulates older x86-64 CPUs")
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                    reason="qemu-x86_64 not found (Debian package qemu-user)")
@pytest.mark.parametrize("cpu,supported,refused", QEMU_CPUS, ids=[c[0] for c in QEMU_CPUS])
def test_runs_on_a_cpu_without_the_wider_instruction_sets(cpu, supported, refused):
    done = subprocess.run(
        ["qemu-x86_64", "-cpu", cpu, sys.executable, str(HERE / "isa_check.py"), *supported,
         "--refuse", *refused],
        capture_output=True, text=True, timeout=900, cwd=HERE,
        env={**os.environ, "GROKFAST_CPU_ISA": "auto"})
    stderr = "\n".join(l for l in done.stderr.splitlines() if not l.startswith("qemu-x86_64: warning"))
    assert done.returncode == 0, f"exit {done.returncode} (-4 is SIGILL)\n{done.stdout}\n{stderr}"
    assert done.stdout.split() == [w for isa in supported for w in (f"{isa}:", "ok")]
