"""The registry of training objectives: a toy one registered by name is what a train step minimises,
and an unregistered name is a config error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from aum_jax.evaluation.losses import label_loss
from aum_jax.models import AuMConfig, init_model
from aum_jax.training import config_checks, objectives, update
from tests.helpers import toy_config


def _model_and_optimizer() -> tuple[nnx.Module, nnx.Optimizer]:
    model = init_model(AuMConfig(num_mel_bins=32, audio_length=32, embed_dim=32, depth=1, num_classes=2), 0)
    return model, nnx.Optimizer(model, optax.sgd(1e-2), wrt=nnx.Param)


def _doubled(model: nnx.Module, batch: dict[str, jax.Array], settings: objectives.Settings) -> tuple[jax.Array, dict]:
    loss, _ = objectives.supervised(model, batch, settings)
    return 2.0 * loss, {"halved": 0.5 * loss}


def test_a_registered_toy_objective_is_what_the_step_minimises(monkeypatch) -> None:
    monkeypatch.setitem(objectives.OBJECTIVES, "doubled", objectives.Objective(_doubled))
    batch = {"fbank": jnp.linspace(-1, 1, 4 * 32 * 32).reshape(4, 32, 32),
             "label": jax.nn.one_hot(jnp.arange(4) % 2, 2)}
    results = {}
    for name in ("supervised", "doubled"):
        model, optimizer = _model_and_optimizer()
        metrics = update.train_step(model, optimizer, batch, "CE", objective=name)
        results[name] = (float(metrics["loss"]), float(metrics["grad_norm"]))
    np.testing.assert_allclose(results["doubled"], 2 * np.array(results["supervised"]), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["halved"]), results["supervised"][0] / 2, rtol=1e-5)  # its metric.


def test_the_supervised_objective_is_the_label_loss() -> None:
    model, _ = _model_and_optimizer()
    batch = {"fbank": jnp.ones((2, 32, 32)), "label": jax.nn.one_hot(jnp.arange(2), 2)}
    want = label_loss(model(batch["fbank"]), batch["label"], "BCE")
    loss, metrics = objectives.supervised(model, batch, objectives.Settings("BCE"))
    np.testing.assert_array_equal(loss, want)
    assert metrics == {}


def test_an_unregistered_objective_is_a_config_error(tmp_path) -> None:
    from tests.helpers import write_toy_dataset

    config = toy_config(write_toy_dataset(tmp_path, clips_per_class=1), num_steps=1)
    config.train.objective = "contrastive"
    with pytest.raises(config_checks.ConfigError, match="config.train.objective='contrastive'"):
        config_checks.check(config, "train")
