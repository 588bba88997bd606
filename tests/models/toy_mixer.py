"""A toy token mixer, registered as a block kind: the shape of an extension of
:mod:`aum_jax.models.mixers` (one module, one registry line). Its tokens mix through a depthwise
causal conv over the sequence and a pointwise MLP; it has no PyTorch original."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from aum_jax.models.layers import CausalConv1d, torch_linear_init
from aum_jax.models.mixers import MIXERS, MixerKind


class ConvMLPMixer(nnx.Module):
    """(B, L, D) -> (B, L, D): ``out(gelu(up(conv(x))))``, the conv ``d_conv`` wide, the MLP ``expand`` times wider."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        dim, inner = config.embed_dim, config.expand * config.embed_dim
        self.conv = CausalConv1d(dim, config.d_conv, True, rngs=rngs)
        self.up = nnx.Linear(dim, inner, kernel_init=torch_linear_init(), rngs=rngs)
        self.out = nnx.Linear(inner, dim, kernel_init=torch_linear_init(), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.gelu(self.up(self.conv(x)))).astype(jnp.float32)


MIXERS["toy_conv_mlp"] = MixerKind("toy_conv_mlp", ConvMLPMixer, fields=("d_conv", "expand"))
