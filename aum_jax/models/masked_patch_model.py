"""The masked patch model of self-supervised pretraining: an AudioMamba backbone (no head), SSAST's
learned mask token and its two prediction heads.

A Mamba reads every position of its sequence in order, so a masked patch cannot be dropped from
the sequence as a transformer's MAE drops it: its embedding is replaced by the learned mask token
(the position embedding still added) and the blocks run over the full sequence, as SSAST and
SSAMBA do. Only ``backbone`` is kept after pretraining (:func:`aum_jax.checkpoints.model_files.save_model`
of it); the mask token and the heads serve the pretraining objective alone
(:mod:`aum_jax.training.masked_patches`).
"""

from __future__ import annotations

import jax
from flax import nnx

from aum_jax.models.aum import AudioMamba
from aum_jax.models.config import AuMConfig


class PatchHead(nnx.Module):
    """SSAST's ``cpredlayer``/``gpredlayer``: Linear(D, D), ReLU, Linear(D, P): (..., D) -> (..., P)."""

    def __init__(self, dim: int, patch_dim: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(dim, dim, rngs=rngs)
        self.out = nnx.Linear(dim, patch_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.relu(self.hidden(x)))


class MaskedPatchModel(nnx.Module):
    """An AudioMamba without head, a mask token (1, 1, D), and a discriminative and a generative head.

    ``model(x, mask)`` maps fbank features (B, T, F) and a patch mask (B, N) bool (frequency-major
    patch order) to the two heads' predictions (B, N, P) each, P = the patch's bins x frames.
    ``model.masking`` is the random stream the objective draws each step's masks from: a model
    variable, so checkpoints carry its position and a resumed run draws the same masks.
    """

    def __init__(self, config: AuMConfig, *, rngs: nnx.Rngs):
        self.backbone = AudioMamba(config.replace(num_classes=0), rngs=rngs)
        dim, patch_dim = config.embed_dim, config.patch_size[0] * config.patch_size[1]
        # SSAST: zeros, then xavier_normal_, whose std for a (1, 1, D) tensor is D ** -0.5.
        self.mask_token = nnx.Param(nnx.initializers.normal(dim ** -0.5)(rngs.params(), (1, 1, dim)))
        self.discriminative = PatchHead(dim, patch_dim, rngs=rngs)
        self.generative = PatchHead(dim, patch_dim, rngs=rngs)
        self.masking = rngs["masking"].fork()

    def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Fbank (B, T, F), mask (B, N) -> discriminative and generative predictions (B, N, P) float32."""
        tokens = self.backbone.masked_patch_tokens(x, mask, self.mask_token[...])
        return self.discriminative(tokens), self.generative(tokens)
