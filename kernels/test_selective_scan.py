"""The Pallas selective-scan kernel: interpret-mode numerics against the pure-JAX scans on
awkward shapes and several channel tiles, its gradients, and its lowering for CUDA through
Triton (checked without a GPU with ``jax.export``)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from aum_jax.ops.scan import scan_readout
from kernels.selective_scan import _pallas_readout, pallas_readout


def inputs(batch, length, dim, n, seed=0):
    keys = jax.random.split(jax.random.key(seed), 5)
    return (
        jax.random.normal(keys[0], (batch, length, dim)),
        jax.nn.softplus(jax.random.normal(keys[1], (batch, length, dim))),
        -jnp.exp(jax.random.normal(keys[2], (dim, n))),
        jax.random.normal(keys[3], (batch, length, n)),
        jax.random.normal(keys[4], (batch, length, n)),
    )


@pytest.mark.parametrize("shape, block_d", [((2, 37, 12, 5), 4), ((1, 1, 7, 3), 64), ((3, 70, 48, 16), 16), ((1, 129, 20, 16), 8)])
def test_interpret_mode_matches_the_sequential_scan(shape, block_d):
    args = inputs(*shape)
    got = pallas_readout(*args, block_d, True)
    want = scan_readout(*args, impl="sequential", chunk_size=0)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_gradients_match_the_sequential_scan():
    args = inputs(2, 33, 10, 4, seed=1)
    weights = jnp.cos(jnp.arange(2 * 33 * 10).reshape(2, 33, 10))

    def loss(fn, *xs):
        return jnp.sum(fn(*xs) * weights)

    pallas = jax.grad(functools.partial(loss, lambda *xs: pallas_readout(*xs, 4, True)), argnums=range(5))(*args)
    sequential = jax.grad(
        functools.partial(loss, lambda *xs: scan_readout(*xs, impl="sequential", chunk_size=0)), argnums=range(5)
    )(*args)
    for got, want in zip(pallas, sequential):
        scale = float(jnp.abs(want).max())
        np.testing.assert_allclose(got / scale, want / scale, atol=1e-5)


@pytest.mark.parametrize("batch, length, dim", [(2, 65, 384), (4, 513, 1536)])  # tiny 128 frames, base 1024
def test_lowers_for_cuda_through_triton(batch, length, dim):
    fn = jax.jit(functools.partial(_pallas_readout, block_d=64, interpret=False))
    shapes = [(batch, length, dim), (batch, length, dim), (dim, 16), (batch, length, 16), (batch, length, 16)]
    exported = export.export(
        fn, platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(*[jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes])
    module = exported.mlir_module()
    assert "__gpu$xla.gpu.triton" in module and "aum_selective_scan" in module
    assert exported.out_avals[0].shape == (batch, length, dim)
