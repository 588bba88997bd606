"""The selective scan from a state, by every implementation that runs here (the C++ CPU kernel, the
Pallas kernel in interpret mode, the pure-JAX scans): from a zero state it is the whole-sequence
scan; a sequence cut into uneven pieces, each scanned from the state the previous one ended in, is
the whole; its outputs and last state from a given state are the pure-JAX ``lax.scan``'s; and the
Pallas kernel with a state lowers for CUDA (``jax.export``, no GPU needed)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from aum_jax.kernels.pallas.selective_scan import (
    selective_scan_from_state as pallas_scan_from_state,
)
from jax import export

from aum_jax.ops import IMPLEMENTATIONS, selective_scan, selective_scan_from_state
from tests.ops.test_scan import SCAN_IMPLS, make_inputs

# (B, L, D, N): D not a multiple of any lane count or tile, N past one CPU pass and not 2^k, and
# L past the Pallas kernel's 128-step chunk (its loop over chunks and its tail).
SHAPES = [(2, 37, 12, 5), (3, 20, 40, 16), (2, 9, 20, 33), (1, 150, 6, 4)]
ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _state(batch: int, dim: int, n: int, seed: int = 1) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, dim, n))


def _args(x: dict, start: int = 0, stop: int | None = None) -> list:
    """The scan's arguments in order, the (B, L, ...) ones cut to time steps [start, stop)."""
    cut = lambda name: x[name][:, start:stop] if x[name].ndim == 3 else x[name]
    return [cut(name) for name in ARGS]


@pytest.mark.parametrize("impl", SCAN_IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_from_a_zero_state_it_is_the_whole_sequence_scan(impl, shape):
    batch, _, dim, n = shape
    x = make_inputs(*shape)
    y, _ = selective_scan_from_state(*_args(x), jnp.zeros((batch, dim, n)), impl=impl)
    whole = selective_scan(*_args(x), delta_softplus=True, impl=impl, chunk_size=16)
    np.testing.assert_allclose(y, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", SCAN_IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_pieces_each_from_the_last_state_join_into_the_whole(impl, shape):
    batch, length, dim, n = shape
    x = make_inputs(*shape)
    h0 = _state(batch, dim, n)
    cuts = [0, 1, 1 + (length - 1) // 3, length]  # one step, a third of the rest, the others.
    state, pieces = h0, []
    for start, stop in itertools.pairwise(cuts):
        out, state = selective_scan_from_state(*_args(x, start, stop), state, impl=impl)
        pieces.append(out)
    whole, last = selective_scan_from_state(*_args(x), h0, impl=impl)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state, last, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", SCAN_IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_outputs_and_last_state_are_the_pure_jax_scans(impl, shape):
    batch, _, dim, n = shape
    x = make_inputs(*shape)
    h0 = _state(batch, dim, n)
    y, h_last = selective_scan_from_state(*_args(x), h0, impl=impl)
    want_y, want_h = selective_scan_from_state(*_args(x), h0, impl="sequential")  # jax_scan.scan_from_state
    assert y.dtype == x["u"].dtype and h_last.dtype == jnp.float32 and h_last.shape == (batch, dim, n)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(h_last, want_h, rtol=1e-5, atol=1e-5)


def test_each_implementation_has_its_own_from_state_kernel():
    assert IMPLEMENTATIONS["pallas"].from_state is pallas_scan_from_state
    kernels = {IMPLEMENTATIONS[name].from_state for name in ("cpu", "pallas", "sequential")}
    assert len(kernels) == 3  # the C++ and Pallas kernels, and the pure-JAX scan the others share.
    assert {IMPLEMENTATIONS[name].from_state for name in ("sequential", "chunked", "associative", "portable")} == {
        IMPLEMENTATIONS["sequential"].from_state}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_the_pallas_kernel_from_a_state_lowers_for_cuda_through_triton(dtype):
    batch, length, dim, n = 2, 65, 384, 16
    S = jax.ShapeDtypeStruct
    rows, states = S((batch, length, dim), dtype), S((batch, length, n), dtype)
    matrix, vector, state = S((dim, n), jnp.float32), S((dim,), jnp.float32), S((batch, dim, n), jnp.float32)
    scan = lambda *args: pallas_scan_from_state(*args, delta_softplus=True, interpret=False)
    exported = export.export(
        jax.jit(scan), platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(rows, rows, matrix, states, states, vector, rows, vector, state)
    module = exported.mlir_module()
    assert "__gpu$xla.gpu.triton" in module and "aum_selective_scan_fwd" in module
    assert [out.shape for out in exported.out_avals] == [(batch, length, dim), (batch, dim, n)]
    assert exported.out_avals[0].dtype == dtype and exported.out_avals[1].dtype == jnp.float32
