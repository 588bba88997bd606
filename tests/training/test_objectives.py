"""The registry of training objectives: a toy one with settings of its own (tests/training/toy_objective.py,
one module and one registry line) is what a train step minimises and a run trains; an unregistered
name, or a setting it refuses, is a config error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from aum_jax.evaluation.losses import label_loss
from aum_jax.models import AuMConfig, init_model
from aum_jax.training import config_checks, objectives, train, update
from tests.helpers import toy_config, write_toy_dataset


@pytest.fixture(scope="module")
def toy_objective():
    """The toy objective's module, registered by importing it; unregistered after this file's tests."""
    from tests.training import toy_objective

    yield toy_objective
    del objectives.OBJECTIVES["scaled"]


def _model_and_optimizer() -> tuple[nnx.Module, nnx.Optimizer]:
    model = init_model(AuMConfig(num_mel_bins=32, audio_length=32, embed_dim=32, depth=1, num_classes=2), 0)
    return model, nnx.Optimizer(model, optax.sgd(1e-2), wrt=nnx.Param)


def test_a_registered_toy_objective_with_settings_is_what_the_step_minimises(toy_objective) -> None:
    batch = {"fbank": jnp.linspace(-1, 1, 4 * 32 * 32).reshape(4, 32, 32),
             "label": jax.nn.one_hot(jnp.arange(4) % 2, 2)}
    results = {}
    for name, settings in (("supervised", objectives.Supervised("CE")), ("scaled", toy_objective.Scaled(3.0, "CE"))):
        model, optimizer = _model_and_optimizer()
        metrics = update.train_step(model, optimizer, batch, name, settings)
        results[name] = (float(metrics["loss"]), float(metrics["grad_norm"]))
    np.testing.assert_allclose(results["scaled"], 3 * np.array(results["supervised"]), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["unscaled"]), results["supervised"][0], rtol=1e-5)  # its metric.


def test_its_settings_come_from_its_own_config_section_and_a_run_trains_it(toy_objective, tmp_path) -> None:
    config = toy_config(write_toy_dataset(tmp_path / "toy", clips_per_class=2), num_steps=2, steps_per_epoch=2)
    assert config.scaled.factor == 2.0  # every recipe carries the section, at its defaults.
    config.train.objective, config.scaled.factor = "scaled", 4.0
    model = AuMConfig.from_dict(config.model.to_dict())
    assert objectives.get("scaled").settings(config, model) == toy_objective.Scaled(4.0, "CE")
    report = train.train_and_evaluate(config, tmp_path / "work")
    assert report["step"] == 2 and np.isfinite(report["train"]["unscaled"])
    config.scaled.factor = 0.0
    with pytest.raises(config_checks.ConfigError, match=r"config.scaled.factor=0.0: must be positive"):
        config_checks.check(config, "train")


def test_the_supervised_objective_is_the_label_loss() -> None:
    model, _ = _model_and_optimizer()
    batch = {"fbank": jnp.ones((2, 32, 32)), "label": jax.nn.one_hot(jnp.arange(2), 2)}
    want = label_loss(model(batch["fbank"]), batch["label"], "BCE")
    loss, metrics = objectives.supervised(model, batch, objectives.Supervised("BCE"))
    np.testing.assert_array_equal(loss, want)
    assert metrics == {}


def test_an_unregistered_objective_is_a_config_error(tmp_path) -> None:
    config = toy_config(write_toy_dataset(tmp_path, clips_per_class=1), num_steps=1)
    config.train.objective = "contrastive"
    with pytest.raises(config_checks.ConfigError, match="config.train.objective='contrastive'"):
        config_checks.check(config, "train")
