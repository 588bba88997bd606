"""Mixed precision: a bfloat16 model trains with float32 parameters and a float32 scan state,
under the kernel and the pure-JAX scans, and stays close to the float32 model."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from aum_jax.models import AudioMamba, AuMConfig

TINY = dict(embed_dim=32, depth=2, num_classes=5, num_mel_bins=32, audio_length=64)


def _train_step(config: AuMConfig, x: jax.Array, y: jax.Array):
    model = AudioMamba(config, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = optax.adam(1e-3)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p, rest)(x)
            return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), y).mean(), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), loss, logits, grads

    return step(params, optimizer.init(params))


def _matmul_dtypes(config: AuMConfig, x: jax.Array) -> set[str]:
    model = AudioMamba(config, rngs=nnx.Rngs(0))
    jaxpr = jax.make_jaxpr(lambda x: model(x))(x)
    found = set()

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.add(str(eqn.invars[0].aval.dtype))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jaxpr.jaxpr)
    return found


@pytest.mark.parametrize("impl, variant", [("sequential", "v1"), ("pallas", "v2")])
def test_bfloat16_model_trains_with_float32_params(impl, variant):
    x = jax.random.normal(jax.random.key(0), (2, 64, 32))
    y = (jax.random.uniform(jax.random.key(1), (2, 5)) < 0.3).astype(jnp.float32)
    config = AuMConfig(**TINY, bimamba_type=variant, scan_impl=impl, scan_chunk_size=8)
    params16, loss16, logits16, grads16 = _train_step(config.replace(dtype="bfloat16"), x, y)
    _, loss32, logits32, grads32 = _train_step(config, x, y)
    assert _matmul_dtypes(config.replace(dtype="bfloat16"), x) == {"bfloat16", "float32"}  # blocks in bf16, head in f32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params16))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
    assert np.isfinite(float(loss16))
    np.testing.assert_allclose(float(loss16), float(loss32), rtol=0.02)
    np.testing.assert_allclose(np.asarray(logits16, np.float32), logits32, atol=0.1)
    # The update moves in the float32 model's direction.
    cosine = [
        float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-12))
        for a, b in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads32))
        if float(jnp.linalg.norm(b)) > 1e-6
    ]
    assert np.median(cosine) > 0.95


def test_predict_computes_at_highest_precision_unless_told(monkeypatch):
    """``predict`` traces its forward pass under ``highest`` by default, as the original computes."""
    from aum_jax.evaluation import evaluate
    from aum_jax.inference import classify

    seen = []
    forward = evaluate._forward

    def spy(graphdef, state, x, **kwargs):
        seen.append(jax.config.jax_default_matmul_precision)
        return forward(graphdef, state, x, **kwargs)

    monkeypatch.setattr(evaluate, "_forward", spy)
    model = AudioMamba(AuMConfig(**TINY), rngs=nnx.Rngs(0))
    features = np.zeros((2, 64, 32), np.float32)
    with jax.default_matmul_precision("bfloat16"):  # a caller's ambient setting does not leak in.
        classify.logits_and_features(model, features)
    classify.logits_and_features(model, features, matmul_precision="tensorfloat32")
    assert seen == ["highest", "tensorfloat32"]


def test_the_precision_reaches_the_compiled_matmuls():
    model = AudioMamba(AuMConfig(**TINY), rngs=nnx.Rngs(0))
    x = jnp.zeros((2, 64, 32))
    texts = {}
    for precision in ("highest", "tensorfloat32"):
        with jax.default_matmul_precision(precision):
            texts[precision] = jax.jit(lambda x: model(x)).lower(x).as_text()
    assert "HIGHEST" in texts["highest"]
    assert texts["tensorfloat32"].count("HIGHEST") < texts["highest"].count("HIGHEST")
