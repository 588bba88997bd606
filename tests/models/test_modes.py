"""Eval mode: ``nnx.view(model, deterministic=True)`` gives an eval-mode view of the same weights;
library functions that run a model in eval mode leave the caller's model in its own mode."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.evaluation import evaluate
from aum_jax.inference import serving, whole
from aum_jax.models import AuMConfig, init_model


def _modes(model) -> set[bool]:
    return {m.deterministic for _, m in model.iter_modules() if hasattr(m, "deterministic")}


def _model(scan_impl: str = "auto"):
    config = AuMConfig(embed_dim=32, depth=2, num_mel_bins=32, audio_length=32, num_classes=2, drop_rate=0.5,
                       drop_path_rate=0.5, scan_impl=scan_impl)
    return init_model(config, 0)


def test_an_eval_view_shares_the_weights_and_leaves_the_model_training():
    model = _model()
    view = nnx.view(model, deterministic=True)
    assert _modes(model) == {False} and _modes(view) == {True}
    assert view.layers.mixer.A_log is model.layers.mixer.A_log
    x = jax.random.normal(jax.random.key(0), (2, 32, 32))
    model.eval()
    np.testing.assert_array_equal(np.asarray(view(x)), np.asarray(model(x)))


def test_evaluation_whole_pass_and_export_leave_a_training_model_training():
    model = _model("portable")  # the scan an exported artifact runs.
    mesh = jax.make_mesh((1,), ("data",), (jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
    batch = {"fbank": np.zeros((2, 32, 32), np.float32), "mask": np.ones(2, bool)}
    evaluate.forward_pass(model, [batch], mesh, "highest")
    assert _modes(model) == {False}
    prep = Preprocessing(num_mel_bins=32, target_length=32, mean=0.0, std=1.0, loss="CE")
    whole.run_whole(model, prep, np.zeros((1, 16_000), np.float32), 16_000)
    assert _modes(model) == {False}
    serving.export_model(model, batch=1, platforms=("cpu",))
    assert _modes(model) == {False}
