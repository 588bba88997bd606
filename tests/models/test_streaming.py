"""Reading a sequence in pieces: the causal conv and the selective scan carry their state from one
piece to the next, and a causal (Fo-Fo) Mamba mixer's stream is its output on the whole sequence,
under every scan implementation the whole pass can take; a bidirectional mixer has no stream."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aum_jax.models import AuMConfig, init_model
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


def _one_pass(**changes) -> AuMConfig:
    """A one-pass model: one token per 4-frame time slice over all 32 bins, no position table, no cls
    token, a head on every token (max-pooled for the clip), causal blocks."""
    return AuMConfig(**{**dict(num_mel_bins=32, audio_length=40, patch_size=(32, 4), strides=(32, 4), embed_dim=24,
                               depth=3, num_classes=3, bimamba_type="none", cls_position="none", pool="max",
                               position="none"), **changes})


def test_a_one_pass_models_stream_gives_the_rows_of_one_pass_over_the_whole_recording():
    model = nnx.view(init_model(_one_pass(), 0), deterministic=True)
    x = jnp.asarray(_normal(np.random.default_rng(2), 2, 200, 32))  # 5x the training length.
    whole = model.whole(x)
    state, rows = model.initial_state(2), []
    for a, b in ((0, 4), (4, 8), (8, 40), (40, 200)):
        out, state = model.stream(x[:, a:b], state)
        rows.append(out["frame_logits"])
    assert whole["frame_logits"].shape == (2, 50, 3)
    np.testing.assert_allclose(np.concatenate(rows, 1), whole["frame_logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(whole["logits"], whole["frame_logits"].max(axis=1), rtol=1e-6)  # the clip: the max.
    with pytest.raises(ValueError, match="a multiple of 4 frames"):
        model.stream(x[:, :6], state)


@pytest.mark.parametrize("changes, reason", [
    (dict(patch_size=(16, 4), strides=(16, 4)), "spans 16 of the 32 mel bins"),
    (dict(strides=(32, 2)), "time slices overlap"),
    (dict(position="absolute"), "position='absolute'"),
    (dict(cls_position="middle", pool="mean"), "cls_position='middle'"),
    (dict(bimamba_type="v2"), "bimamba_type='v2'"),
])
def test_a_model_that_reads_the_whole_sequence_does_not_stream(changes, reason):
    with pytest.raises(ValueError, match=f"this model does not stream: .*{reason}"):
        init_model(_one_pass(**changes), 0).initial_state(1)


def test_without_a_position_table_the_model_has_none_and_reads_any_length():
    model = init_model(_one_pass(bimamba_type="v2"), 0)  # the bidirectional one-pass model: for files.
    assert not hasattr(model, "pos_embed")
    for frames in (40, 44, 400):
        assert model.whole(jnp.zeros((1, frames, 32)))["frame_logits"].shape == (1, frames // 4, 3)
