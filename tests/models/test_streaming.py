"""Reading a sequence in pieces: the causal conv and the selective scan carry their state from one
piece to the next, and a causal (Fo-Fo) Mamba mixer's stream is its output on the whole sequence,
under every scan implementation the whole pass can take; a bidirectional mixer has no stream, but a
Bi-Bi one reads its backward branch in pieces from the end (its forward one from the start), padded
pieces leaving the states as they are, and the two joined are its output on the whole sequence."""

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


def _directions(mixer: Mamba, x: jax.Array, size: int) -> np.ndarray:
    """The mixer over x (B, L, D) read as the chunked whole pass reads it: pieces of ``size`` steps (the
    last padded with junk), the backward branch from the last piece to the first, then the forward one."""
    length = x.shape[1]
    pieces = [(a, min(size, length - a)) for a in range(0, length, size)]
    pad = lambda a: jnp.pad(x[:, a:a + size], ((0, 0), (0, size - x[:, a:a + size].shape[1]), (0, 0)),
                            constant_values=7.0)  # junk past the end: the padding's own values must not count.
    backward, state = {}, mixer.initial_state(x.shape[0])
    if mixer.config.bimamba_type == "v2":
        for a, valid in reversed(pieces):
            backward[a], state = mixer.direction(pad(a), state, jnp.int32(valid), reverse=True)
    out, state = [], mixer.initial_state(x.shape[0])
    for a, valid in pieces:
        forward, state = mixer.direction(pad(a), state, jnp.int32(valid), reverse=False)
        out.append(mixer.join(forward, backward.get(a))[:, :valid])
    return np.concatenate(out, 1)


@pytest.mark.parametrize("bimamba_type, if_devide_out", [("v2", True), ("v2", False), ("none", True)])
@pytest.mark.parametrize("size", [5, 8, 37, 64])
def test_a_mixers_directions_read_in_pieces_are_its_output_on_the_whole_sequence(bimamba_type, if_devide_out, size):
    """37 steps in pieces of 5 (the last of 2), 8 (the last of 5), one piece or one padded piece."""
    config = AuMConfig(embed_dim=16, bimamba_type=bimamba_type, if_devide_out=if_devide_out, scan_impl="sequential",
                       depth=2)
    mixer = Mamba(config, rngs=nnx.Rngs(0))
    x = jnp.asarray(_normal(np.random.default_rng(3), 2, 37, 16))
    whole = mixer(x)
    kernels = Mamba(config.replace(scan_impl="cpu"), rngs=nnx.Rngs(0))  # the same weights, the C++ kernels.
    np.testing.assert_allclose(nnx.view(kernels, deterministic=True)(x), whole, rtol=1e-5, atol=1e-5)
    for read in (mixer, kernels):
        np.testing.assert_allclose(_directions(read, x, size), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_padded_last_piece_reads_as_the_sequences_end(reverse):
    """Steps past ``valid`` are past the sequence's end: the real steps' outputs are the unpadded piece's, and
    the backward branch, which reads them first, leaves them in the state it starts from."""
    mixer = Mamba(AuMConfig(embed_dim=16, bimamba_type="v2", depth=2), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(4)
    x, junk = jnp.asarray(_normal(rng, 1, 6, 16)), jnp.asarray(_normal(rng, 1, 10, 16))
    y, state = mixer.direction(x, mixer.initial_state(1), jnp.int32(6), reverse=reverse)
    y_padded, state_padded = mixer.direction(jnp.concatenate([x, junk], 1), mixer.initial_state(1), jnp.int32(6),
                                             reverse=reverse)
    np.testing.assert_allclose(y_padded[:, :6], y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(state_padded.ssm, state.ssm, rtol=1e-6, atol=1e-6)
    if reverse:
        np.testing.assert_array_equal(state_padded.conv, state.conv)


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


@pytest.mark.parametrize("changes, reads", [
    (dict(), True), (dict(bimamba_type="v2"), True), (dict(bimamba_type="v1"), False),
    (dict(position="absolute"), False), (dict(strides=(32, 2)), False),
])
def test_a_one_pass_models_whole_pass_reads_in_chunks_unless_fo_bi(changes, reads):
    model = init_model(_one_pass(**changes), 0)
    if reads:
        model.check_reads_in_chunks()
    else:
        with pytest.raises(ValueError, match="whole pass is not read in chunks: "):
            model.check_reads_in_chunks()


def test_a_one_pass_models_pieces_of_a_recording_are_its_whole_pass_in_pieces():
    """Slice tokens embedded per piece, the final norm and head per piece, the head pooled over all."""
    model = nnx.view(init_model(_one_pass(bimamba_type="v2", pool="mean"), 0), deterministic=True)
    x = jnp.asarray(_normal(np.random.default_rng(5), 1, 80, 32))
    whole = model.whole(x)
    tokens = jnp.concatenate([model.slice_tokens(x[:, :36]), model.slice_tokens(x[:, 36:])], 1)
    np.testing.assert_allclose(tokens, model.slice_tokens(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.pooled_logits(whole["frames"]), whole["logits"], rtol=1e-6, atol=1e-6)
    assert model.whole_tokens(80) == 20


def test_without_a_position_table_the_model_has_none_and_reads_any_length():
    model = init_model(_one_pass(bimamba_type="v2"), 0)  # the bidirectional one-pass model: for files.
    assert not hasattr(model, "pos_embed")
    for frames in (40, 44, 400):
        assert model.whole(jnp.zeros((1, frames, 32)))["frame_logits"].shape == (1, frames // 4, 3)
