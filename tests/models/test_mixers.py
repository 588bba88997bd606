"""Block kinds: the token mixer comes from :data:`aum_jax.models.mixers.MIXERS`. A toy kind added by
one module and one registry line (tests/models/toy_mixer.py) trains, saves, loads and predicts
through the normal commands; what a model directory fixes is derived from the registry."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from aum_jax.checkpoints import convert, model_files
from aum_jax.models import AuMConfig, init_model
from aum_jax.models import config as config_lib
from aum_jax.models.mixers import MIXERS
from tests.helpers import REPO_ROOT, SAMPLE, subprocess_env

# The command's module run as ``python -m`` would, after the toy kind is registered in that process.
_WITH_TOY = "import runpy, sys, tests.models.toy_mixer; sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__')"


def _command(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _WITH_TOY, module, *args], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def toy_kind():
    """The toy kind registered by importing its module; unregistered after this file's tests."""
    import tests.models.toy_mixer  # noqa: F401

    yield "toy_conv_mlp"
    del MIXERS["toy_conv_mlp"]


def test_every_config_field_is_the_models_the_datas_trainings_executions_or_a_mixers():
    """A new field must say what it is: fine-tuning adopts the architecture's (model's + its mixer's)."""
    grouped = [*config_lib.MODEL_ARCHITECTURE_FIELDS, *config_lib.DATA_FIELDS, *config_lib.TRAINING_FIELDS,
               *config_lib.EXECUTION_FIELDS, *{f for kind in MIXERS.values() for f in kind.fields}]
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(AuMConfig))
    assert AuMConfig().architecture_fields() == config_lib.MODEL_ARCHITECTURE_FIELDS + MIXERS["mamba"].fields


def test_an_unknown_mixer_is_named_with_the_registered_ones():
    with pytest.raises(ValueError, match=r"mixer must be one of \('mamba'.*got 'attention'"):
        AuMConfig(mixer="attention")


def test_a_toy_block_kind_trains_saves_loads_and_predicts_through_the_commands(toy_kind, tmp_path, toy_overrides):
    workdir = tmp_path / "work"
    done = _command("aum_jax.main", "--config=configs/speechcommands.py:runlocal", f"--workdir={workdir}",
                    *toy_overrides, "--config.model.mixer=toy_conv_mlp", "--config.model.expand=3")
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((workdir / "model" / model_files.CONFIG_FILE).read_text())
    assert (saved["mixer"], saved["expand"]) == ("toy_conv_mlp", 3)
    model = model_files.load_model(workdir / "model")
    assert type(model.layers.mixer).__name__ == "ConvMLPMixer"
    assert model.layers.mixer.up.kernel.shape == (1, 32, 96)  # (depth, embed_dim, expand * embed_dim)
    assert model.config.architecture_fields()[-2:] == ("d_conv", "expand")

    done = _command("aum_jax.predict", "--model-dir", str(workdir / "model"), "--audio", str(SAMPLE), "--top-k", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"{SAMPLE}: ") and {"high", "low"} <= set(done.stdout.replace(",", " ").split())

    without = subprocess.run([sys.executable, "-m", "aum_jax.predict", "--model-dir", str(workdir / "model"), "--audio",
                              str(SAMPLE)], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True,
                             timeout=600)
    assert without.returncode == 1 and "toy_conv_mlp" in without.stderr.strip().splitlines()[-1]


def test_a_kind_the_original_lacks_has_no_pytorch_state_dict(toy_kind):
    model = init_model(AuMConfig(embed_dim=32, depth=1, num_mel_bins=32, audio_length=32, num_classes=2,
                                 mixer="toy_conv_mlp"), 0)
    with pytest.raises(convert.CheckpointError, match="'toy_conv_mlp' mixer has no counterpart"):
        convert.torch_state_dict(model)
