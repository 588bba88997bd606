"""The learning-rate schedules against torch's own schedulers driven as the original's
training loop drives them, and the guards on batch sizes and report JSON."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from aum_jax.configs import audioset_20k, epic_sounds, speechcommands
from aum_jax.configs.common import get_mesh_config

from aum_jax.core import sharding
from aum_jax.evaluation import report
from aum_jax.training import update


def torch_lrs(lr: float, steps_per_epoch: int, epochs: int, milestones_from: int, every: int, gamma: float, warmup: bool):
    """lr used at each step by the original loop: MultiStepLR per epoch, warm-up staircase per step."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(range(milestones_from, 1000, every)), gamma=gamma)
    lrs, step = [], 0
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            if warmup and step <= 1000 and step % 50 == 0:
                for group in optimizer.param_groups:
                    group["lr"] = step / 1000 * lr
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            step += 1
        scheduler.step()
    return np.array(lrs)


@pytest.mark.parametrize("module, steps_per_epoch", [(audioset_20k, 1700), (speechcommands, 300)])
def test_multistep_schedule_matches_torch(module, steps_per_epoch):
    opt = module.get_config().optimizer
    epochs = module.get_config().train.num_epochs
    ours = update.learning_rate_schedule(opt, steps_per_epoch)
    got = np.array([float(ours(s)) for s in range(0, steps_per_epoch * epochs, 7)])
    want = torch_lrs(opt.lr, steps_per_epoch, epochs, opt.decay_start_epoch, opt.decay_every_epochs, opt.decay_factor,
                     opt.warmup_steps > 0)[::7]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)


def test_epic_schedule_holds_the_lr_after_its_warm_up():
    opt = epic_sounds.get_config().optimizer
    steps_per_epoch = 100
    schedule = update.learning_rate_schedule(opt, steps_per_epoch)
    assert float(schedule(0)) == pytest.approx(0.01 * opt.lr)
    assert float(schedule(100)) == pytest.approx(opt.lr * (0.01 + 0.99 * 0.5))
    for epoch in (2, 10, 25):
        assert float(schedule(epoch * steps_per_epoch)) == pytest.approx(opt.lr)


def test_batch_sizes_must_divide_over_the_mesh():
    eight_devices = types.SimpleNamespace(size=8)  # only the device count is read
    assert sharding.check_batch_size(32, eight_devices, "data.batch_size") == 32
    with pytest.raises(ValueError, match="data.eval_batch_size=100 per process .* pick a multiple of 8"):
        sharding.check_batch_size(100, eight_devices, "data.eval_batch_size")
    mesh = sharding.make_mesh(get_mesh_config())
    assert sharding.check_batch_size(mesh.size, mesh, "data.batch_size") == mesh.size


def test_reports_are_standard_json():
    text = report.to_json({"d_prime": float("inf"), "mAP": float("nan"), "accuracy": 0.5, "nested": {"x": float("-inf")}})
    assert json.loads(text) == {"accuracy": 0.5, "d_prime": None, "mAP": None, "nested": {"x": None}}
