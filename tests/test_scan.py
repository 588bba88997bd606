"""The selective-scan implementations agree with a float64 NumPy recurrence and with each other,
on outputs and gradients, and the chunked scan never materialises the full (B, L, D, N) state."""

from __future__ import annotations

import itertools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from aum_jax.ops import SCAN_IMPLS, selective_scan
from aum_jax.ops.scan import _discretize, resolve_impl

SHAPES = [(2, 37, 12, 5), (1, 1, 7, 3), (3, 64, 24, 16), (2, 129, 6, 4)]  # (B, L, D, N): odd L, L=1, D not 2^k


def make_inputs(batch, length, dim, n, seed=0, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 8)
    return dict(
        u=jax.random.normal(keys[0], (batch, length, dim), dtype),
        delta=jax.random.normal(keys[1], (batch, length, dim), dtype),
        A=-jnp.exp(jax.random.normal(keys[2], (dim, n))),
        B=jax.random.normal(keys[3], (batch, length, n), dtype),
        C=jax.random.normal(keys[4], (batch, length, n), dtype),
        D=jax.random.normal(keys[5], (dim,)),
        z=jax.random.normal(keys[6], (batch, length, dim), dtype),
        delta_bias=jax.random.normal(keys[7], (dim,)),
    )


def numpy_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """The recurrence written out step by step in float64."""
    u, delta, A, B, C = (np.asarray(x, np.float64) for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + np.asarray(delta_bias, np.float64)
    if delta_softplus:
        delta = np.log1p(np.exp(delta))
    batch, length, dim = u.shape
    h = np.zeros((batch, dim, A.shape[1]))
    ys = []
    for t in range(length):
        h = np.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append(np.einsum("bdn,bn->bd", h, C[:, t]))
    y = np.stack(ys, axis=1)
    if D is not None:
        y = y + u * np.asarray(D, np.float64)
    if z is not None:
        z = np.asarray(z, np.float64)
        y = y * z / (1 + np.exp(-z))
    return y


@pytest.mark.parametrize("impl", SCAN_IMPLS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_float64_recurrence(impl, shape):
    inputs = make_inputs(*shape)
    out = selective_scan(**inputs, delta_softplus=True, impl=impl, chunk_size=16)
    np.testing.assert_allclose(out, numpy_reference(**inputs), atol=2e-5, rtol=2e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_agree(shape):
    inputs = make_inputs(*shape, seed=1)
    names = tuple(inputs)

    def loss(impl, *args):
        out = selective_scan(**dict(zip(names, args)), delta_softplus=True, impl=impl, chunk_size=16)
        return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))

    grads = {impl: jax.grad(loss, argnums=tuple(range(1, 9)))(impl, *inputs.values()) for impl in SCAN_IMPLS}
    for a, b in itertools.combinations(SCAN_IMPLS, 2):
        for name, ga, gb in zip(names, grads[a], grads[b]):
            scale = float(jnp.abs(ga).max()) + 1e-6
            np.testing.assert_allclose(ga / scale, gb / scale, atol=2e-5, err_msg=f"d/d{name}: {a} vs {b}")


@pytest.mark.parametrize("impl", SCAN_IMPLS)
def test_optional_arguments_and_no_softplus(impl):
    inputs = make_inputs(2, 9, 5, 3)
    delta = jnp.abs(inputs["delta"])
    out = selective_scan(inputs["u"], delta, inputs["A"], inputs["B"], inputs["C"], impl=impl, chunk_size=4)
    ref = numpy_reference(inputs["u"], delta, inputs["A"], inputs["B"], inputs["C"], delta_softplus=False)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-4)


@pytest.mark.parametrize("impl", SCAN_IMPLS)
def test_low_precision_inputs_keep_a_float32_state(impl):
    inputs = make_inputs(2, 50, 8, 4, dtype=jnp.bfloat16)
    out = selective_scan(**inputs, delta_softplus=True, impl=impl, chunk_size=16)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), numpy_reference(**inputs), atol=0.1, rtol=0.02)


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match="Unknown selective-scan impl"):
        selective_scan(**make_inputs(1, 3, 2, 2), impl="cuda")


def test_auto_picks_by_backend():
    assert resolve_impl("auto") == ("sequential" if jax.default_backend() == "cpu" else "associative")
    assert resolve_impl("chunked") == "chunked"


def _intermediate_shapes(jaxpr) -> set[tuple[int, ...]]:
    shapes = set()
    for eqn in jaxpr.eqns:
        shapes.update(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            shapes |= _intermediate_shapes(sub)
    return shapes


def test_chunked_never_holds_the_full_state_tensor():
    batch, length, dim, n, chunk = 2, 256, 8, 4, 32
    inputs = make_inputs(batch, length, dim, n)

    def loss(impl, u):
        return selective_scan(**{**inputs, "u": u}, delta_softplus=True, impl=impl, chunk_size=chunk).sum()

    full = (batch, length, dim, n)
    chunked = _intermediate_shapes(jax.make_jaxpr(jax.grad(lambda u: loss("chunked", u)))(inputs["u"]).jaxpr)
    assert full not in chunked
    assert (batch, chunk, dim, n) in chunked
    associative = _intermediate_shapes(jax.make_jaxpr(jax.grad(lambda u: loss("associative", u)))(inputs["u"]).jaxpr)
    assert full in associative  # the check can fail: the associative scan does hold it


def test_discretize_shapes():
    inputs = make_inputs(2, 5, 3, 4)
    decay, drive = _discretize(inputs["u"], inputs["delta"], inputs["A"], inputs["B"])
    assert decay.shape == drive.shape == (2, 5, 3, 4)
