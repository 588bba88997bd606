"""AudioMamba's structure: the published parameter counts, the original's initialisation
scheme, stochastic depth, train/eval modes and input validation."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aum_jax.models import AUM_TYPES, EMBED_DIMS, AudioMamba, AuMConfig, count_params, init_model, model_with_params
from aum_jax.models.aum import drop_path_rates

# The seed's checkpoint tables: (classes, frames) -> (base Fo-Bi, small Bi-Bi) parameter counts.
PUBLISHED_COUNTS = {
    "AudioSet": (527, 1024, 92_107_535, 25_539_215),
    "VGGSound": (309, 1024, 91_939_893, 25_455_285),
    "VoxCeleb": (1251, 1024, 92_664_291, 25_817_955),
    "EPIC-Sounds": (44, 1024, 91_736_108, 25_353_260),
    "Speech Commands": (35, 128, 91_385_123, 25_177_763),
}


def abstract_count(**fields) -> int:
    config = AuMConfig(**fields)
    return count_params(nnx.eval_shape(lambda: AudioMamba(config, rngs=nnx.Rngs(0))))


MODELS = {"base Fo-Bi": (EMBED_DIMS["base"], AUM_TYPES["Fo-Bi"]), "small Bi-Bi": (EMBED_DIMS["small"], AUM_TYPES["Bi-Bi"])}


@pytest.mark.parametrize("dataset", ["AudioSet", "Speech Commands"])  # 1024 and 128 frames
def test_published_parameter_counts(dataset):
    classes, frames, *published = PUBLISHED_COUNTS[dataset]
    for (width, variant), count in zip(MODELS.values(), published):
        assert abstract_count(embed_dim=width, bimamba_type=variant, num_classes=classes, audio_length=frames,
                              num_mel_bins=128, strides=(16, 16)) == count


@pytest.mark.parametrize("dataset", ["VGGSound", "VoxCeleb", "EPIC-Sounds"])
def test_published_counts_of_the_other_1024_frame_models(dataset):
    """The 24-block models' counts from a 1- and a 2-block model (every block is the same shape): the
    1-block model holds the embedding, head and one block; each further block adds the difference."""
    classes, frames, *published = PUBLISHED_COUNTS[dataset]
    for (width, variant), count in zip(MODELS.values(), published):
        one, two = (abstract_count(embed_dim=width, bimamba_type=variant, num_classes=classes, audio_length=frames,
                                   num_mel_bins=128, strides=(16, 16), depth=depth) for depth in (1, 2))
        assert one + 23 * (two - one) == count


def test_fixture_parameter_counts(fixtures_dir):
    import json

    for name in ("tiny_fobi", "tiny_bibi"):
        meta = json.loads((fixtures_dir / "aum_torch" / name / "config.json").read_text())
        count = abstract_count(
            embed_dim=EMBED_DIMS[meta["size"]], depth=meta["depth"], num_classes=meta["n_class"],
            audio_length=meta["audio_length"], bimamba_type=AUM_TYPES[meta["aum_type"]],
        )
        assert count == meta["n_params"]


def test_patch_grid_with_overlapping_strides():
    config = AuMConfig(strides=(10, 10), audio_length=1024)
    assert config.patch_grid == (12, 101)  # (128-16)//10+1, (1024-16)//10+1, as a VALID conv gives
    model = nnx.eval_shape(lambda: AudioMamba(config.replace(depth=1), rngs=nnx.Rngs(0)))
    assert model.pos_embed.shape == (1, 12 * 101 + 1, 768)


def test_drop_path_decay_rule():
    # Block i gets entry i-1 of linspace(0, rate, depth); block 0 gets 0.
    rates = drop_path_rates(AuMConfig(depth=5, drop_path_rate=0.4))
    np.testing.assert_allclose(rates, [0.0, 0.0, 0.1, 0.2, 0.3], atol=1e-7)


@pytest.fixture(scope="module")
def small_model() -> AudioMamba:
    config = AuMConfig(embed_dim=64, depth=3, num_classes=7, audio_length=64, bimamba_type="v2", dt_rank=None)
    return init_model(config, seed=0)


def test_initialisation_follows_the_original(small_model):
    cfg = small_model.config
    params = nnx.state(small_model, nnx.Param)
    mixer = params["layers"]["mixer"]
    n, d_inner, rank = cfg.d_state, cfg.d_inner, cfg.resolved_dt_rank
    assert rank == math.ceil(64 / 16)
    np.testing.assert_allclose(jnp.exp(mixer["A_log"][...]), np.broadcast_to(np.arange(1, n + 1), (3, d_inner, n)), rtol=1e-6)
    np.testing.assert_array_equal(mixer["D"][...], 1.0)
    np.testing.assert_array_equal(mixer["D_b"][...], 1.0)
    dt = jax.nn.softplus(mixer["dt_proj"]["bias"][...])
    assert float(dt.min()) >= cfg.dt_min * 0.999 and float(dt.max()) <= cfg.dt_max * 1.001
    assert float(jnp.abs(mixer["dt_proj"]["kernel"][...]).max()) <= rank**-0.5
    assert float(jnp.abs(mixer["in_proj"]["kernel"][...]).max()) <= 1 / math.sqrt(cfg.embed_dim)
    out_bound = 1 / math.sqrt(d_inner) / math.sqrt(cfg.depth)
    out = mixer["out_proj"]["kernel"][...]
    assert float(jnp.abs(out).max()) <= out_bound and float(jnp.abs(out).max()) > 0.9 * out_bound
    assert float(jnp.abs(mixer["conv1d"]["kernel"][...]).max()) <= 0.5  # 1/sqrt(d_conv)
    # The Bi-Bi backward dt_proj is a plain Linear in the original: default weight, zeroed bias.
    np.testing.assert_array_equal(mixer["dt_proj_b"]["bias"][...], 0.0)
    back = jnp.abs(mixer["dt_proj_b"]["kernel"][...]).max()
    assert 0.9 * rank**-0.5 < float(back) <= rank**-0.5
    assert float(jnp.abs(mixer["x_proj_b"]["kernel"][...]).max()) <= 1 / math.sqrt(d_inner)
    np.testing.assert_array_equal(jnp.exp(mixer["A_b_log"][...]), jnp.exp(mixer["A_log"][...]))
    np.testing.assert_array_equal(params["layers"]["norm"]["weight"][...], 1.0)
    np.testing.assert_array_equal(params["head"]["bias"][...], 0.0)
    assert abs(float(jnp.std(params["head"]["kernel"][...])) - 0.02) < 0.005
    assert abs(float(jnp.std(params["pos_embed"][...])) - 0.02) < 0.002
    lecun_std = math.sqrt(1 / 256)
    assert abs(float(jnp.std(params["patch_embed"]["proj"]["kernel"][...])) - lecun_std) < 0.1 * lecun_std
    np.testing.assert_array_equal(params["patch_embed"]["proj"]["bias"][...], 0.0)
    # Layers are initialised independently, not copies of one another.
    assert not np.allclose(mixer["in_proj"]["kernel"][...][0], mixer["in_proj"]["kernel"][...][1])


def test_stochastic_depth_and_dropout_only_in_train_mode():
    config = AuMConfig(embed_dim=32, depth=4, num_classes=3, audio_length=32, drop_path_rate=0.5, drop_rate=0.1)
    model = init_model(config, seed=0)
    x = jax.random.normal(jax.random.key(1), (4, 32, 128))
    model.eval()
    np.testing.assert_array_equal(model(x), model(x))
    model.train()
    a, b = model(x), model(x)
    assert not np.allclose(a, b)
    model.eval()
    np.testing.assert_array_equal(model(x), model(x))


def test_headless_model_returns_features():
    model = init_model(AuMConfig(embed_dim=32, depth=1, num_classes=0, audio_length=32), seed=0)
    model.eval()
    x = jnp.ones((2, 32, 128))
    np.testing.assert_array_equal(model(x), model.outputs(x)["features"])
    assert model(x).shape == (2, 32)


def test_rejects_wrongly_shaped_input(small_model):
    with pytest.raises(ValueError, match=r"expects \(batch, 64, 128\)"):
        small_model(jnp.zeros((2, 128, 64)))


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(bimamba_type="v3"), r"bimamba_type must be one of .*got 'v3'"),
        (dict(cls_position="left"), r"cls_position must be one of .*got 'left'"),
        (dict(pool="median"), r"pool must be one of .*got 'median'"),
        (dict(audio_length=8), r"audio_length=8 is smaller than the patch \(16\)"),
        (dict(scan_impl="cuda"), r"scan_impl must be one of .* or 'auto', got 'cuda'"),
        (dict(strides=(0, 16)), r"strides must be positive, got \(0, 16\)"),
        (dict(depth=0), r"depth must be positive, got 0"),
        (dict(num_classes=-1), r"num_classes must be >= 0, got -1"),
        (dict(drop_path_rate=1.0), r"drop_path_rate must be in \[0, 1\), got 1.0"),
        (dict(pool="max"), r"pool='max' needs cls_position='none'"),
        (dict(transpose_token_sequence=True, strides=(10, 10)), r"transpose_token_sequence needs strides equal"),
    ],
)
def test_config_validation_names_the_field_and_its_value(bad, message):
    with pytest.raises(ValueError, match=message):
        AuMConfig(**bad)


def test_config_round_trip(tmp_path):
    config = AuMConfig(strides=(10, 12), cls_position="double", bimamba_type="none")
    (tmp_path / "c.json").write_text(json.dumps(config.to_dict()))
    assert AuMConfig.from_dict(json.loads((tmp_path / "c.json").read_text())) == config
    with pytest.raises(ValueError, match="Unknown AuMConfig fields"):
        AuMConfig.from_dict({"embed": 3})


def test_gradients_flow_to_every_parameter(small_model):
    x = jax.random.normal(jax.random.key(2), (2, 64, 128))

    def loss(model):
        return jnp.sum(model(x) ** 2)

    grads = nnx.grad(loss)(small_model)
    for path, g in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grads)):
        assert float(jnp.abs(g).max()) > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


@pytest.mark.parametrize("bimamba_type", ["none", "v1", "v2"])
def test_eval_mode_inference_kernels_compute_the_training_function(bimamba_type):
    """In eval mode the C++ scan's fused inference kernels run (conv + SiLU; the scan with softplus, skip,
    both directions and gate): the logits and the input gradient equal train mode's (no dropout here)."""
    from aum_jax.kernels.cpu import cpu_scan

    if cpu_scan.unavailable_reason() is not None:
        pytest.skip(cpu_scan.unavailable_reason())
    config = AuMConfig(embed_dim=64, depth=2, audio_length=96, num_mel_bins=32, num_classes=5,
                       bimamba_type=bimamba_type, if_devide_out=True, scan_impl="cpu")
    model = init_model(config)
    x = jnp.asarray(np.random.RandomState(0).randn(2, 96, 32), jnp.float32)

    def run(mode):
        getattr(model, mode)()
        graphdef, state = nnx.split(model)
        fn = lambda x: nnx.merge(graphdef, state)(x)
        jaxpr = str(jax.make_jaxpr(fn)(x))
        return fn(x), jax.grad(lambda x: (fn(x) * jnp.arange(5.0)).sum())(x), jaxpr

    eval_logits, eval_grad, eval_jaxpr = run("eval")
    train_logits, train_grad, train_jaxpr = run("train")
    assert "aum_scan_inference_cpu" in eval_jaxpr and "aum_conv_silu_cpu" in eval_jaxpr
    assert "aum_scan_inference_cpu" not in train_jaxpr
    np.testing.assert_allclose(eval_logits, train_logits, atol=2e-6, rtol=0)
    np.testing.assert_allclose(eval_grad, train_grad, atol=2e-6, rtol=0)


def test_a_model_with_given_params_holds_them_and_init_models_rng_state():
    config = AuMConfig(embed_dim=32, depth=2, num_classes=3, audio_length=64, num_mel_bins=32, drop_path_rate=0.1)
    initialised = init_model(config, seed=3)
    params = jax.tree.map(lambda p: p + 1.0, nnx.state(initialised, nnx.Param))
    built = model_with_params(config, params, seed=3)
    as_numbers = lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    for name, (want, got) in {"params": (params, nnx.state(built, nnx.Param)),
                              "rngs": (nnx.state(initialised, nnx.Not(nnx.Param)), nnx.state(built, nnx.Not(nnx.Param)))
                              }.items():
        assert jax.tree.structure(want) == jax.tree.structure(got), name
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            np.testing.assert_array_equal(as_numbers(a), as_numbers(b), err_msg=name)
