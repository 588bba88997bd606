"""The events objective: each loss on hand-made steps (the best step of an event takes the positive, the
steps outside every event the negatives, padding nothing), and the settings it refuses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from aum_jax.models import AuMConfig
from aum_jax.training import event_detection as ed


def case():
    targets = np.zeros((1, 12, 2), np.float32)
    targets[0, 2:5, 0] = 1.0  # two events of class 0
    targets[0, 8:10, 0] = 1.0
    valid = np.ones((1, 12), np.float32)
    valid[0, 11] = 0.0  # padding
    return jnp.asarray(targets), jnp.asarray(valid)


def test_max_trains_each_events_best_step_and_the_steps_outside_events():
    targets, valid = case()
    logits = np.full((1, 12, 2), -6.0, np.float32)
    logits[0, 3, 0] = logits[0, 10, 0] = 6.0  # each event fired once (the second in its tail step)
    low = ed._best_steps(jnp.asarray(logits), targets, valid, tail=1)
    assert float(low[0]) < 0.01
    grad = jax.grad(lambda x: ed._best_steps(x, targets, valid, 1).sum())(jnp.asarray(logits))[0]
    inside = [2, 3, 4, 5, 8, 9, 10]  # the events and one tail step each
    assert all(grad[t, 0] == 0 for t in inside if t not in (3, 10))  # only the best step of an event
    assert grad[11].sum() == 0  # padding
    assert all(grad[t, 0] > 0 for t in (0, 1, 6, 7)) and (grad[:11, 1] > 0).all()  # negatives pushed down
    missed = logits.copy()
    missed[0, 10, 0] = -6.0  # the second event not fired: its positive costs
    assert float(ed._best_steps(jnp.asarray(missed), targets, valid, 1)[0]) > 2.5
    false_alarm = logits.copy()
    false_alarm[0, 0, 1] = 6.0
    assert float(ed._best_steps(jnp.asarray(false_alarm), targets, valid, 1)[0]) > 0.25


def test_frames_trains_every_valid_step_against_its_target():
    targets, valid = case()
    perfect = jnp.where(targets > 0, 8.0, -8.0)
    assert float(ed._every_step(perfect, targets, valid)[0]) < 1e-3
    padding_wrong = perfect.at[0, 11].set(8.0)  # padding is not scored
    assert float(ed._every_step(padding_wrong, targets, valid)[0]) == pytest.approx(
        float(ed._every_step(perfect, targets, valid)[0]))


def settings_of(**changes):
    config = ml_collections.ConfigDict({"data": {"frame_targets": True, "frame_shift_ms": 10.0},
                                        "train": {"loss": "BCE"}, "events": ed.default_config()})
    for key, value in changes.items():
        section, name = key.split(".")
        config[section][name] = value
    return ed.step_settings(config, AuMConfig(num_mel_bins=32, patch_size=(32, 4), strides=(32, 4)))


def test_settings_read_the_config_and_refuse_what_cannot_work():
    s = settings_of(**{"events.positives": "max", "events.tail_seconds": 0.25})
    assert (s.patch, s.stride, s.positives, s.tail_steps) == (4, 4, "max", 6)  # 0.25 s of 40 ms steps
    with pytest.raises(ValueError, match="needs config.data.frame_targets=True"):
        settings_of(**{"data.frame_targets": False})
    with pytest.raises(ValueError, match="config.events.positives='best'"):
        settings_of(**{"events.positives": "best"})
