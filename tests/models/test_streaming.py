"""Reading a sequence in pieces: the causal conv and the selective scan carry their state from one
piece to the next, and a causal (Fo-Fo) Mamba mixer's stream is its output on the whole sequence,
under every scan implementation the whole pass can take; a bidirectional mixer has no stream."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aum_jax.models import AuMConfig
from aum_jax.models.mixers.mamba import Mamba
from aum_jax.ops import SCAN_IMPLS, selective_scan, selective_scan_from_state
from aum_jax.ops.conv import causal_conv, causal_conv_from_history

PIECES = [(0, 1), (1, 2), (2, 9), (9, 10), (10, 37)]  # one step, a few, the rest: 37 steps in all.


def _normal(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


def test_the_conv_and_the_scan_carry_their_state_across_pieces():
    rng = np.random.default_rng(0)
    u, delta, z, B, C = (_normal(rng, 2, 37, n) for n in (6, 6, 6, 4, 4))
    A, D, bias, kernel = -np.exp(_normal(rng, 6, 4)), _normal(rng, 6), _normal(rng, 6), _normal(rng, 4, 6)
    conv, history, scan, state = [], jnp.zeros((2, 3, 6)), [], jnp.zeros((2, 6, 4))
    for a, b in PIECES:
        out, history = causal_conv_from_history(u[:, a:b], history, kernel, bias)
        conv.append(out)
        out, state = selective_scan_from_state(u[:, a:b], delta[:, a:b], A, B[:, a:b], C[:, a:b], D, z[:, a:b],
                                               bias, state)
        scan.append(out)
    np.testing.assert_array_equal(np.concatenate(conv, 1), causal_conv(u, kernel, bias))
    whole = selective_scan(u, delta, A, B, C, D, z, bias, True, impl="sequential")
    np.testing.assert_allclose(np.concatenate(scan, 1), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", [i for i in SCAN_IMPLS if i != "pallas" or jax.default_backend() == "gpu"])
def test_a_causal_mixers_stream_is_its_output_on_the_whole_sequence(impl):
    mixer = Mamba(AuMConfig(embed_dim=16, bimamba_type="none", scan_impl=impl, depth=2), rngs=nnx.Rngs(0))
    x = jnp.asarray(_normal(np.random.default_rng(1), 3, 37, 16))
    whole = mixer(x)
    state, pieces = mixer.initial_state(3), []
    for a, b in PIECES:
        out, state = mixer.stream(x[:, a:b], state)
        pieces.append(out)
    np.testing.assert_allclose(np.concatenate(pieces, 1), whole, rtol=1e-5, atol=1e-5)
    evaluated = nnx.view(mixer, deterministic=True)(x)  # the inference kernels, where the implementation has them.
    np.testing.assert_allclose(np.concatenate(pieces, 1), evaluated, rtol=1e-5, atol=1e-5)
    assert jax.tree.map(jnp.shape, state) == jax.tree.map(jnp.shape, mixer.initial_state(3))  # a fixed size.


def test_a_bidirectional_mixer_has_no_stream():
    mixer = Mamba(AuMConfig(embed_dim=16, bimamba_type="v2", depth=2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="only the causal one .*streams"):
        mixer.stream(jnp.zeros((1, 4, 16)), mixer.initial_state(1))
