"""Masked spectrogram patch modelling (``config.train.objective="masked_patches"``), as SSAST pretrains.

Each step masks ``num_masked`` of a clip's N patches (drawn in the step from the model's own random
stream: the same masks for a seed and step whatever the workers, devices or hosts), replaces their
embeddings by the learned mask token (:class:`aum_jax.models.masked_patch_model.MaskedPatchModel`) and
predicts, at each masked position, the clip's own patch from the final tokens:

- discriminative: InfoNCE over the clip's masked positions, the other masked patches of the same
  clip as the negatives; its accuracy is how often a prediction scores its own patch highest;
- generative: the mean squared error of the reconstructed patch.

``loss = discriminative_weight * infonce + generative_weight * mse`` (SSAST's joint objective:
1 and 10). Patches must not overlap (strides = patch size): a masked patch would show through its
neighbours.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections

from aum_jax.models.config import AuMConfig
from aum_jax.models.masked_patch_model import MaskedPatchModel


@dataclasses.dataclass(frozen=True)
class MaskedPatches:
    """The static settings of masked patch modelling (hashable: a static argument of the step).

    Attributes:
      grid: the patch grid (F', T').
      patch_size: a patch's (bins, frames).
      num_masked: masked patches per clip, M.
      cluster_sides: ``(lo, hi)``: masks come in squares of ``lo..hi`` patches a side (SSAST's
        cluster masking: 3 to 5); ``(1, 1)`` masks single patches at random.
      discriminative_weight, generative_weight: the two losses' weights.
      normalise_target: reconstruct each patch standardised to zero mean and unit variance (MAE's
        ``norm_pix_loss``) rather than as the model sees it (SSAST).
    """

    grid: tuple[int, int]
    patch_size: tuple[int, int]
    num_masked: int
    cluster_sides: tuple[int, int] = (3, 5)
    discriminative_weight: float = 1.0
    generative_weight: float = 10.0
    normalise_target: bool = False


def default_config() -> ml_collections.ConfigDict:
    """``config.pretrain`` at SSAST's defaults: masked patch modelling (``train.objective="masked_patches"``);
    not in the original."""
    c = ml_collections.ConfigDict()
    c.mask_ratio = 0.78125  # share of each clip's patches masked: SSAST masks 400 of its 512.
    c.cluster = True  # SSAST's cluster masking: squares of neighbouring patches (False: single patches at random).
    c.cluster_sides = (3, 5)  # a square's side in patches, drawn from low..high (SSAST: 3 to 5).
    c.discriminative_weight = 1.0  # weight of the InfoNCE loss (SSAST's joint objective: 1).
    c.generative_weight = 10.0  # weight of the reconstruction MSE (SSAST: 10).
    c.normalise_target = False  # reconstruct each patch standardised (MAE's norm_pix_loss); SSAST: as the model sees it.
    return c


def step_settings(config: ml_collections.ConfigDict, model: AuMConfig) -> MaskedPatches:
    """The step's :class:`MaskedPatches` from ``config.pretrain`` and the backbone's config:
    M = round(mask_ratio * N) of the grid's N patches.

    Raises:
      ValueError: a setting it cannot use, naming its key (overlapping patches among them; a ratio that
        masks fewer than 2 patches, as InfoNCE needs a negative, or leaves none visible on the grid).
    """
    p = config.get("pretrain")
    if p is None:
        raise ValueError("config.pretrain is missing: masked patch modelling reads its settings (configs/pretrain.py)")
    if tuple(model.strides) != tuple(model.patch_size):
        raise ValueError(f"config.model.strides={tuple(model.strides)}: masked patch modelling needs patches that do "
                         f"not overlap (strides = patch_size {tuple(model.patch_size)}), or a masked patch shows "
                         "through its neighbours")
    if not 0.0 < p.mask_ratio < 1.0:
        raise ValueError(f"config.pretrain.mask_ratio={p.mask_ratio}: must be in (0, 1)")
    sides = tuple(p.cluster_sides)
    if len(sides) != 2 or not 1 <= sides[0] <= sides[1]:
        raise ValueError(f"config.pretrain.cluster_sides={tuple(p.cluster_sides)}: need (low, high) with 1 <= low <= high")
    for key in ("discriminative_weight", "generative_weight"):
        if p[key] < 0:
            raise ValueError(f"config.pretrain.{key}={p[key]}: must be at least 0")
    if p.discriminative_weight + p.generative_weight <= 0:
        raise ValueError("config.pretrain.discriminative_weight and generative_weight are both 0: nothing to learn")
    n = model.num_patches
    num_masked = round(p.mask_ratio * n)
    if not 2 <= num_masked <= n - 1:
        grid = " x ".join(map(str, model.patch_grid))
        fits = (f"choose a ratio that masks 2 to {n - 1} of them ({2 / n:.4g} to {(n - 1) / n:.4g})" if n >= 3
                else "the grid is too small to mask 2 patches and leave one visible: lengthen config.data.audio_length")
        raise ValueError(f"config.pretrain.mask_ratio={p.mask_ratio} masks {num_masked} of the {n} patches of the "
                         f"{grid} grid ({'none visible' if num_masked >= n else 'InfoNCE needs at least 2'}); {fits}")
    return MaskedPatches(model.patch_grid, tuple(model.patch_size), num_masked, sides if p.cluster else (1, 1),
                         p.discriminative_weight, p.generative_weight, p.normalise_target)


def masked_indices(key: jax.Array, settings: MaskedPatches) -> jax.Array:
    """One clip's ``num_masked`` distinct masked patch indices (M,) int32 in [0, N), frequency-major.

    M squares of a random side in ``cluster_sides`` are placed at random patches (clipped at the
    grid's edges); the patches of the first squares are taken first, each square's in random
    order, as SSAST adds clusters until M patches are masked. Where overlapping squares cover
    fewer than M patches, the rest are drawn at random among the uncovered ones.
    """
    f_grid, t_grid = settings.grid
    n, m = f_grid * t_grid, settings.num_masked
    k_start, k_side, k_order = jax.random.split(key, 3)
    starts = jax.random.randint(k_start, (m,), 0, n)
    sides = jax.random.randint(k_side, (m,), settings.cluster_sides[0], settings.cluster_sides[1] + 1)
    f, t = jnp.divmod(jnp.arange(n), t_grid)  # (N,) each patch's row and column.
    f0, t0 = jnp.divmod(starts, t_grid)
    inside = ((f[None] >= f0[:, None]) & (f[None] < (f0 + sides)[:, None])
              & (t[None] >= t0[:, None]) & (t[None] < (t0 + sides)[:, None]))  # (M squares, N)
    first_square = jnp.where(inside.any(axis=0), jnp.argmax(inside, axis=0), m)  # (N,)
    priority = first_square + jax.random.uniform(k_order, (n,))
    return jnp.argsort(priority)[:m].astype(jnp.int32)


def draw_masks(key: jax.Array, batch: int, settings: MaskedPatches) -> tuple[jax.Array, jax.Array]:
    """A batch's masks: indices (B, M) int32 and the mask (B, N) bool; row ``i`` from ``fold_in(key, i)``."""
    keys = jax.vmap(functools.partial(jax.random.fold_in, key))(jnp.arange(batch))
    indices = jax.vmap(lambda k: masked_indices(k, settings))(keys)
    n = settings.grid[0] * settings.grid[1]
    mask = jnp.zeros((batch, n), bool).at[jnp.arange(batch)[:, None], indices].set(True)
    return indices, mask


def patches(fbank: jax.Array, settings: MaskedPatches) -> jax.Array:
    """Fbank (B, T, F) -> its non-overlapping patches (B, N, P), frequency-major as the patch embedding
    reads them; a patch's P values run over its bins, then its frames (SSAST's ``nn.Unfold``)."""
    pf, pt = settings.patch_size
    x = jnp.swapaxes(fbank, 1, 2)[:, None]  # (B, 1, F, T)
    out = jax.lax.conv_general_dilated_patches(x, (pf, pt), (pf, pt), "VALID",
                                               precision=jax.lax.Precision.HIGHEST)  # (B, P, F', T')
    return out.reshape(out.shape[0], pf * pt, -1).swapaxes(1, 2)


def objective(model: MaskedPatchModel, batch: dict[str, jax.Array], s: MaskedPatches) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The batch's joint loss and ``{"infonce", "mse", "masked_accuracy"}`` of ``batch["fbank"]`` (B, T, F);
    labels unused."""
    fbank = batch["fbank"]
    indices, mask = draw_masks(model.masking(), fbank.shape[0], s)
    discriminative, generative = model(fbank, mask)  # (B, N, P) each.
    take = functools.partial(jnp.take_along_axis, indices=indices[..., None], axis=1)
    target = take(patches(fbank, s)).astype(jnp.float32)  # (B, M, P)
    scores = jnp.einsum("bip,bjp->bij", target, take(discriminative))  # (B, M, M): patch i vs prediction j.
    log_probs = jax.nn.log_softmax(scores, axis=-1)
    infonce = -jnp.mean(jnp.diagonal(log_probs, axis1=1, axis2=2))
    # SSAST's accuracy: for each prediction j, the patch i of highest softmax-over-predictions score.
    hits = jnp.argmax(log_probs, axis=1) == jnp.arange(s.num_masked)
    if s.normalise_target:
        mean, var = target.mean(axis=-1, keepdims=True), target.var(axis=-1, keepdims=True)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    mse = jnp.mean((take(generative) - target) ** 2)
    loss = s.discriminative_weight * infonce + s.generative_weight * mse
    return loss, {"infonce": infonce, "mse": mse, "masked_accuracy": jnp.mean(hits)}
