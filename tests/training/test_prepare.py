"""Fine-tuning from a model directory adopts what fixes the model and its input features, as the
registries and Preprocessing say, and nothing else: every architecture field (the model's and its
mixer's) and every feature field, whatever the recipe's own values."""

from __future__ import annotations

import dataclasses

from aum_jax.checkpoints.model_files import save_model
from aum_jax.configs import speechcommands
from aum_jax.data.features import preprocessing
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.models import AuMConfig, init_model
from aum_jax.models import config as model_config
from aum_jax.training import prepare


def test_every_preprocessing_field_is_a_feature_length_normalisation_or_label_field():
    grouped = (*preprocessing.FEATURE_FIELDS, *preprocessing.LENGTH_FIELDS, *preprocessing.NORMALISATION_FIELDS,
               *preprocessing.LABEL_FIELDS)
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(Preprocessing))


def test_a_fine_tune_adopts_every_architecture_and_feature_field_and_nothing_else(tmp_path):
    source = AuMConfig(num_mel_bins=32, audio_length=48, num_classes=3, embed_dim=24, depth=1, bimamba_type="none",
                       d_state=4, d_conv=3, expand=1, dt_rank=5, conv_bias=False, proj_bias=True, norm_epsilon=1e-6,
                       residual_in_fp32=False, if_devide_out=False, cls_position="head", strides=(16, 8),
                       dt_min=0.01, dt_max=0.2, dt_init_floor=1e-3, dt_scale=0.5, drop_path_rate=0.2)
    prep = Preprocessing(num_mel_bins=32, target_length=48, sample_rate=8000, frame_shift_ms=12.5, mean=-3.0, std=2.0,
                         loss="BCE", class_names=("a", "b", "c"))
    save_model(init_model(source, 0), tmp_path / "m", preprocessing=prep)
    config = speechcommands.get_config("runlocal")
    before_model, before_data = config.model.to_dict(), config.data.to_dict()
    prepare.adopt_model_dir(config, str(tmp_path / "m"))
    plain = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
    for name in source.architecture_fields():
        assert plain(config.model[name]) == plain(getattr(source, name)), name
    for name in preprocessing.FEATURE_FIELDS:
        assert config.data[name] == getattr(prep, name), name
    # The run's own: its classes, input length, statistics and training settings (the mel bins follow the features).
    for name in (*model_config.DATA_FIELDS, *model_config.TRAINING_FIELDS, *model_config.EXECUTION_FIELDS):
        assert config.model[name] == (prep.num_mel_bins if name == "num_mel_bins" else before_model[name]), name
    for name in ("mean", "std", "num_classes", "audio_length", "label_csv"):
        assert config.data[name] == before_data[name], name
