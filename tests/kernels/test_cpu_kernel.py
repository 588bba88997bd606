"""The C++ CPU scan kernel (``kernels/cpu_scan.cc``) built for every instruction set this
machine executes (native, AVX2 as ``x86-64-v3``, x86-64's SSE2 baseline), side by side in one
process: outputs and the five gradients against the sequential scan in both directions on
awkward shapes, and the forward kernel from a given state; what each build reports and which
FFI targets a trace calls; that the time loops keep their vectors in registers (no stack
traffic, ``scripts/kernel_asm_report.py``); and that the kernel cross-compiles for aarch64
without a warning where that compiler is installed."""

from __future__ import annotations

import importlib.util
import platform
import re
import shutil
import subprocess

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from aum_jax.kernels.cpu import cpu_scan

from aum_jax.ops import bidirectional_scan, jax_scan, selective_scan
from aum_jax.ops.conv import causal_conv
from tests.helpers import REPO_ROOT

X86 = platform.machine().lower() in ("x86_64", "amd64")
# Every target this machine can build and run: its own CPU, and on x86 AVX2 and the SSE2 baseline.
VARIANTS = ["native", *(["x86-64-v3", "x86-64"] if X86 else [])]
WANT_ISA = {"x86-64-v3": ("avx2", 8), "x86-64": ("generic", 4)}
# (B, L, D, N): D not a multiple of any lane count, L = 1 and batch 1, odd L, N past one pass.
SHAPES = [(2, 37, 12, 5), (1, 1, 7, 3), (3, 20, 40, 16), (2, 9, 20, 33)]
AARCH64_CXX = "aarch64-linux-gnu-g++"


def loaded(march: str) -> cpu_scan.Variant:
    """The kernel for ``march``, or a skip when this machine cannot build or run it."""
    reason = cpu_scan.unavailable_reason(march)
    if reason is not None:
        pytest.skip(f"{march}: {reason}")
    return cpu_scan.variant(march)


def inputs(batch, length, dim, n, seed=0):
    """u, delta (positive, as after the softplus), A (negative), B, C."""
    k = jax.random.split(jax.random.key(seed), 5)
    return (jax.random.normal(k[0], (batch, length, dim)), jax.nn.softplus(jax.random.normal(k[1], (batch, length, dim))),
            -jnp.exp(jax.random.normal(k[2], (dim, n))), jax.random.normal(k[3], (batch, length, n)),
            jax.random.normal(k[4], (batch, length, n)))


def sequential(u, delta, A, B, C, reverse):
    """The readout of XLA's sequential scan; reversed by flipping time around it."""
    if reverse:
        flip = lambda x: jnp.flip(x, axis=1)
        return flip(sequential(flip(u), flip(delta), A, flip(B), flip(C), False))
    return selective_scan(u, delta, A, B, C, impl="sequential")


def assert_close(got, want, tol, name):
    """Agreement relative to the largest magnitude of ``want``."""
    scale = float(jnp.abs(want).max()) + 1e-6
    np.testing.assert_allclose(np.asarray(got) / scale, np.asarray(want) / scale, atol=tol, err_msg=name)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("march", VARIANTS)
def test_outputs_and_gradients_match_the_sequential_scan(march, shape, reverse):
    loaded(march)
    args = inputs(*shape)
    weights = jnp.cos(jnp.arange(np.prod(shape[:3])).reshape(shape[:3]))

    def loss(fn, *args):
        out = fn(*args)
        return jnp.sum(out * weights), out

    kernel = lambda *a: cpu_scan.scan_readout(*a, reverse, march=march)
    (_, got), got_grads = jax.value_and_grad(loss, argnums=(1, 2, 3, 4, 5), has_aux=True)(kernel, *args)
    (_, want), want_grads = jax.value_and_grad(loss, argnums=(1, 2, 3, 4, 5), has_aux=True)(
        lambda *a: sequential(*a, reverse), *args)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-4)
    for name, g, w in zip(("du", "ddelta", "dA", "dB", "dC"), got_grads, want_grads):
        assert g.shape == w.shape
        assert_close(g, w, 2e-5, f"{march} {name}")


@pytest.mark.parametrize("march", VARIANTS)
def test_extreme_decays_underflow_like_exp(march):
    """delta * A far below exp's range (the kernel's 2^x clamps at 2^-126) and delta = 0 (decay 1)."""
    loaded(march)
    u, delta, A, B, C = inputs(2, 11, 20, 4, seed=1)
    delta = delta.at[:, 3].set(200.0).at[:, 7].set(0.0)
    A = A.at[:, 0].set(-50.0)
    got = cpu_scan.scan_readout(u, delta, A, B, C, False, march=march)
    np.testing.assert_allclose(got, sequential(u, delta, A, B, C, False), atol=2e-5, rtol=2e-4)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("march", VARIANTS)
def test_from_a_state_matches_the_pure_jax_scan(march, shape):
    """The forward kernel from a given state (B, D, N): its readout and last state against the pure-JAX
    ``lax.scan``'s, and two pieces, the second from the first's last state, against the whole."""
    loaded(march)
    batch, length, dim, n = shape
    args = inputs(*shape, seed=7)
    h0 = jax.random.normal(jax.random.key(8), (batch, dim, n))
    y, h_last = cpu_scan.scan_from_state(*args, h0, march=march)
    want_y, want_h = jax_scan.scan_from_state(*args, h0)
    assert_close(y, want_y, 2e-6, f"{march} y")
    assert_close(h_last, want_h, 2e-6, f"{march} h_last")
    cut = length // 2
    first, state = cpu_scan.scan_from_state(*(x[:, :cut] if x.ndim == 3 else x for x in args), h0, march=march)
    second, state = cpu_scan.scan_from_state(*(x[:, cut:] if x.ndim == 3 else x for x in args), state, march=march)
    np.testing.assert_array_equal(np.concatenate([first, second], axis=1), y)  # the same arithmetic, in pieces
    np.testing.assert_array_equal(state, h_last)


@pytest.mark.parametrize("reverse", [False, True], ids=["causal", "anticausal"])
@pytest.mark.parametrize("shape", [(2, 37, 20), (1, 2, 7)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("march", VARIANTS)
def test_inference_conv_matches_xla(march, shape, reverse):
    """The fused conv + SiLU reads the first D channels of a wider row, as of in_proj's output."""
    loaded(march)
    batch, length, dim = shape
    k = jax.random.split(jax.random.key(3), 3)
    x = 3 * jax.random.normal(k[0], (batch, length, 2 * dim + 1))
    kernel, bias = jax.random.normal(k[1], (4, dim)), jax.random.normal(k[2], (dim,))
    got = cpu_scan.conv_silu(x, kernel, bias, dim, reverse, march=march)
    want = jax.nn.silu(causal_conv(x[..., :dim], kernel, bias, reverse=reverse))
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-6)


@pytest.mark.parametrize("directions", ["one", "shared", "own"])
@pytest.mark.parametrize("shape", SHAPES[:2] + SHAPES[3:], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("march", VARIANTS)
def test_inference_scan_matches_xla(march, shape, directions):
    """Softplus of biased deltas (from -40 to 40), the D skip, both directions (Fo-Bi's shared inputs or
    Bi-Bi's own), the scale and the gate, against the training path's bidirectional_scan."""
    loaded(march)
    batch, length, dim, n = shape
    first, second = inputs(*shape, seed=4), inputs(*shape, seed=5)
    k = jax.random.split(jax.random.key(6), 5)
    raw = [20 * jax.random.normal(k[i], (batch, length, dim)) for i in range(2)]
    skips = [jax.random.normal(k[2], (dim,)), jnp.cos(jnp.arange(dim))]
    biases = [jax.random.normal(k[3], (dim,)), jnp.sin(jnp.arange(dim))]
    xz = jax.random.normal(k[4], (batch, length, 2 * dim))
    pick = {"one": [0], "shared": [0, 0], "own": [0, 1]}[directions]
    srcs = [first, second]
    us = tuple(srcs[i][0] for i in pick)
    deltas = tuple(raw[i] for i in pick)
    As = (first[2], second[2])[: len(pick)]
    Bs, Cs = tuple(srcs[i][3] for i in pick), tuple(srcs[i][4] for i in pick)
    Ds, bs = tuple(skips[i] for i in pick), tuple(biases[i] for i in pick)
    got = cpu_scan.scan_inference(us, deltas, As, Bs, Cs, Ds, bs, xz, 0.5, march=march)
    want = bidirectional_scan(us, deltas, As, Bs, Cs, Ds, xz[..., dim:], bs, delta_softplus=True, scale=0.5,
                              impl="sequential")
    assert_close(got, want, 2e-6, f"{march} {directions}")


def test_variants_report_their_instruction_set_and_load_side_by_side(monkeypatch):
    """Each build says what it was built for; two builds in one process call their own FFI targets,
    and ``use()`` switches what ``scan_impl="cpu"`` runs, retracing functions traced before."""
    monkeypatch.delenv(cpu_scan.MARCH_ENV, raising=False)
    native = loaded("native")
    flags = cpu_scan.cpu_flags()
    if X86:
        assert (native.isa, native.lanes) == (("avx512", 16) if "avx512f" in flags else ("avx2", 8) if "avx2" in flags
                                              else ("generic", 4))
    elif platform.machine().lower() in ("aarch64", "arm64"):
        assert (native.isa, native.lanes) == ("neon", 4)
    if not X86:
        pytest.skip("a second x86 build needs an x86 CPU")
    other = loaded("x86-64-v3")
    assert (other.isa, other.lanes) == WANT_ISA["x86-64-v3"] and other.library != native.library
    assert (native.forward_target, other.forward_target) == ("aum_scan_cpu_fwd", "aum_scan_cpu_fwd_x86-64-v3")

    args = inputs(1, 5, 8, 4)
    targets = lambda fn: [e.params["target_name"] for e in _eqns(jax.make_jaxpr(fn)(*args).jaxpr)
                          if e.primitive.name == "ffi_call"]
    scan = lambda *a: selective_scan(*a, impl="cpu")
    assert targets(scan) == ["aum_scan_cpu_fwd"]
    jitted = jax.jit(scan)
    first = jitted(*args)
    with cpu_scan.use("x86-64-v3"):
        assert cpu_scan.selected_march() == "x86-64-v3"
        assert targets(scan) == ["aum_scan_cpu_fwd_x86-64-v3"]
        assert "aum_scan_cpu_fwd_x86-64-v3" in jitted.lower(*args).as_text()
        np.testing.assert_allclose(jitted(*args), first, atol=1e-6, rtol=1e-5)
    assert cpu_scan.selected_march() == "native" and targets(scan) == ["aum_scan_cpu_fwd"]


def _eqns(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _eqns(sub)


def test_march_flag_spelling():
    assert cpu_scan.target_flag("x86-64-v3") == "-march=x86-64-v3"
    assert cpu_scan.target_flag("-mcpu=neoverse-n1") == "-mcpu=neoverse-n1"
    assert cpu_scan.target_flag("native") == ("-mcpu=native" if platform.machine().lower() in ("aarch64", "arm64")
                                              else "-march=native")


def _asm_report():
    spec = importlib.util.spec_from_file_location("kernel_asm_report", REPO_ROOT / "scripts" / "kernel_asm_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ASM_TARGETS = [("c++", "native"), *([("c++", "x86-64-v3"), ("c++", "x86-64")] if X86 else []), (AARCH64_CXX, "armv8-a")]


@pytest.mark.parametrize("compiler, march", ASM_TARGETS, ids=[m for _, m in ASM_TARGETS])
def test_time_loops_keep_their_vectors_in_registers(tmp_path, compiler, march):
    """Compiled with the build's flags, the passes' loops over time load and store no vector on
    the stack: a pass's states and temporaries fit the target's register file."""
    if shutil.which(compiler) is None:
        pytest.skip(f"no {compiler}")
    report = _asm_report()
    output = tmp_path / "cpu_scan.s"
    subprocess.run(cpu_scan.compile_command(compiler, march, output, "-S"), check=True, capture_output=True)
    counted = report.count(output.read_text())
    names = report.demangle(sorted(counted))
    passes = {names[n]: tally for n, (tally, _) in counted.items() if re.search(report.KERNEL_FUNCTIONS, names[n])}
    assert len(passes) >= 4, sorted(names.values())
    spilled = {name: tally["all"] for name, tally in passes.items() if tally["all"]}
    assert not spilled, spilled


@pytest.mark.skipif(shutil.which(AARCH64_CXX) is None, reason=f"no {AARCH64_CXX} (apt install g++-aarch64-linux-gnu)")
def test_cross_compiles_for_aarch64_without_warnings(tmp_path):
    """The build's own command for an ARM target, with every warning an error, gives an aarch64 library."""
    library = tmp_path / "cpu_scan.so"
    done = subprocess.run(cpu_scan.compile_command(AARCH64_CXX, "armv8-a", library, "-shared", "-Wall", "-Wextra", "-Werror"),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    header = library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
