"""AudioMamba in Flax NNX."""

from aum_jax.models.aum import AudioMamba, count_params, init_model, model_with_params, skeleton
from aum_jax.models.config import AUM_TYPES, EMBED_DIMS, AuMConfig

__all__ = ["AUM_TYPES", "EMBED_DIMS", "AudioMamba", "AuMConfig", "count_params", "init_model", "model_with_params",
           "skeleton"]
