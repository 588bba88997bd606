"""The registry of token mixers: what a block runs between its RMSNorm and the residual stream.

``config.model.mixer`` names a kind; each kind is one module of this package plus one line of
:data:`MIXERS`. A kind gives:

- ``module(config, *, rngs)``: the mixer, an ``nnx.Module`` mapping (B, L, D) -> (B, L, D);
- ``fields``: the :class:`aum_jax.models.AuMConfig` fields it reads. They fix its parameters and
  forward pass, so a model directory carries them and fine-tuning from one adopts them
  (:func:`aum_jax.models.config.architecture_fields`);
- ``torch_layout(name)`` and ``infer_fields(tensors)``: how the original PyTorch checkpoint's
  tensors under ``layers.N.mixer.`` map onto it (a layout where it is not the default, see
  :mod:`aum_jax.checkpoints.convert`), and the config read off their shapes; None for a kind the
  original does not have (its models are not converted).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from flax import nnx

from aum_jax.models.mixers import mamba
from aum_jax.models.torch_layout import Layout


@dataclasses.dataclass(frozen=True)
class MixerKind:
    """One kind of token mixer (see the module docstring)."""

    name: str
    module: Callable[..., nnx.Module]
    fields: tuple[str, ...]
    torch_layout: Callable[[str], Layout | None] | None = None
    infer_fields: Callable[[dict[str, np.ndarray]], dict[str, Any]] | None = None


MIXERS: dict[str, MixerKind] = {
    kind.name: kind for kind in (
        MixerKind("mamba", mamba.Mamba, mamba.FIELDS, mamba.torch_layout, mamba.infer_fields),
    )
}
