"""AudioMamba: patch embedding, cls token, position embedding, Mamba blocks and head.

The forward pass, for an input fbank (B, T, F):

1. transpose to (B, F, T) and cut into patches with a strided conv -> (B, F'*T', D), patches
   ordered frequency-major (or time-major with ``transpose_token_sequence``);
2. add the absolute position embedding, whose cls entries are stored first, and insert the cls
   token(s) at their position (the middle of the sequence by default);
3. run the stack of Mamba blocks as one ``nnx.scan`` over layer-stacked parameters;
4. add the last residual, RMS-normalise, take the cls token (or pool) and apply the head.

``model(x)`` gives the logits; ``model.outputs(x)`` every output of the same pass (logits, the
head's input, the pooled tokens, each block's pooled residual stream, the patch tokens).
``model.whole(x)`` runs once over a whole recording, longer than the training clips: the
position embedding extended along time (``WHOLE_POS_EMBEDS``), the cls token in its place in the
longer sequence, and the head applied to each time step's patch tokens as well.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aum_jax.core import warm_start
from aum_jax.models.block import Block
from aum_jax.models.config import AuMConfig
from aum_jax.models.layers import RMSNorm
from aum_jax.ops import SCAN_READOUT


def timm_trunc_normal(std: float = 0.02) -> nnx.Initializer:
    """timm's ``trunc_normal_(std=std)``: N(0, std) cut at the absolute values +-2."""

    def init(key, shape, dtype=jnp.float32):
        return (jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, jnp.float32) * std).astype(dtype)

    return init


# How model.whole extends the position embedding's time axis to a longer recording:
# "interpolate": resized linearly, as the original resizes it for a checkpoint of another length
# (positions keep their place relative to the whole input); "tile": the trained clip's columns
# repeated, so that every stretch of a clip's length sees the spacing it was trained with.
WHOLE_POS_EMBEDS = ("interpolate", "tile")


def drop_path_rates(config: AuMConfig) -> np.ndarray:
    """(depth,) stochastic-depth rate of each block.

    The original draws ``linspace(0, drop_path_rate, depth)`` and gives block ``i`` entry
    ``i - 1`` of it (block 0 gets 0), so the last rate is never used by a block.
    """
    rates = np.linspace(0.0, config.drop_path_rate, config.depth)
    return np.concatenate([[0.0], rates[:-1]]).astype(np.float32)


def stack_modules(modules: list[nnx.Module]) -> nnx.Module:
    """Merges identically built modules into one whose arrays carry a leading layer axis.

    The blocks are built one by one from the model's ``Rngs`` and then stacked (not built by
    ``nnx.vmap`` over split keys), so a seed gives the parameters drawn in layer order.
    """
    splits = [nnx.split(m) for m in modules]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[state for _, state in splits])
    return nnx.merge(splits[0][0], stacked)


class PatchEmbed(nnx.Module):
    """A strided conv over the (F, T) plane: (B, F, T, 1) -> (B, F', T', D)."""

    def __init__(self, config: AuMConfig, *, rngs: nnx.Rngs):
        self.proj = nnx.Conv(
            1, config.embed_dim, kernel_size=config.patch_size, strides=config.strides,
            padding="VALID", dtype=jnp.dtype(config.dtype),
            kernel_init=nnx.initializers.lecun_normal(), bias_init=nnx.initializers.zeros, rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


class DropPath(nnx.Module):
    """Per-sample keep masks for stochastic depth, scaled by 1/keep like timm's DropPath."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.rngs = rngs["dropout"].fork()
        self.deterministic = False

    def set_view(self, deterministic: bool | None = None):
        """``nnx.view(model, deterministic=True)``: no stochastic depth in the view."""
        if deterministic is not None:
            self.deterministic = deterministic

    def masks(self, rates: np.ndarray, batch: int) -> jax.Array:
        """rates (K,) -> keep masks (K, B, 1, 1); all ones in eval mode or when every rate is 0."""
        if self.deterministic or not rates.any():
            return jnp.ones((len(rates), batch, 1, 1), jnp.float32)
        keep = jnp.asarray(1.0 - rates)[:, None, None, None]
        draws = jax.random.bernoulli(self.rngs(), keep, (len(rates), batch, 1, 1))
        return draws / keep


class AudioMamba(nnx.Module):
    """The AuM classifier. ``model(x)`` maps fbank features (B, T, F) to logits (B, classes)."""

    def __init__(self, config: AuMConfig, *, rngs: nnx.Rngs):
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config, rngs=rngs)
        init = timm_trunc_normal(0.02)
        if config.cls_position == "double":
            self.cls_token_head = nnx.Param(init(rngs.params(), (1, 1, dim)))
            self.cls_token_tail = nnx.Param(init(rngs.params(), (1, 1, dim)))
        elif config.cls_position != "none":
            self.cls_token = nnx.Param(init(rngs.params(), (1, 1, dim)))
        if config.position == "absolute":
            self.pos_embed = nnx.Param(init(rngs.params(), (1, config.num_cls_tokens + config.num_patches, dim)))
        self.pos_drop = nnx.Dropout(config.drop_rate, rngs=rngs)
        self.layers = stack_modules([Block(config, rngs=rngs) for _ in range(config.depth)])
        self.drop_path = DropPath(rngs=rngs)
        self.norm_f = RMSNorm(dim, config.norm_epsilon)
        if config.num_classes > 0:
            self.head = nnx.Linear(
                dim, config.num_classes, kernel_init=timm_trunc_normal(0.02),
                bias_init=nnx.initializers.zeros, rngs=rngs,
            )

    def tokens(self, x: jax.Array, mask: jax.Array | None = None, mask_token: jax.Array | None = None, *,
               pos_embed: str = "interpolate") -> jax.Array:
        """Fbank (B, T, F) -> embedded token sequence (B, N + cls tokens, D).

        With ``mask`` (B, N) bool over the patches in frequency-major order, the embeddings of the
        masked patches are replaced by ``mask_token`` (1, 1, D) before the position embedding is
        added, as SSAST masks its patches. A longer input than the config's (``whole``) gets the
        position embedding extended along time by ``pos_embed`` (one of ``WHOLE_POS_EMBEDS``).
        """
        cfg = self.config
        patches = self.patch_embed(jnp.swapaxes(x, 1, 2)[..., None])
        batch, f_grid, t_grid, dim = patches.shape
        n_cls = cfg.num_cls_tokens
        patches = patches.reshape(batch, f_grid * t_grid, dim)
        if mask is not None:
            patches = jnp.where(mask[..., None], mask_token.astype(patches.dtype), patches)
        if cfg.position == "absolute":
            pos = self.pos_embed[...]
            patches = patches + _extended_pos(pos[:, n_cls:], cfg.patch_grid, t_grid, pos_embed)
        else:  # no table: a cls token is itself.
            pos = jnp.zeros((1, n_cls, dim), jnp.float32)
        if cfg.transpose_token_sequence:
            patches = jnp.swapaxes(patches.reshape(batch, f_grid, t_grid, dim), 1, 2)
            patches = patches.reshape(batch, t_grid * f_grid, dim)
        if cfg.cls_position == "double":
            head = jnp.broadcast_to(self.cls_token_head[...] + pos[:, :1], (batch, 1, dim))
            tail = jnp.broadcast_to(self.cls_token_tail[...] + pos[:, 1:2], (batch, 1, dim))
            tokens = jnp.concatenate([head, patches.astype(head.dtype), tail], axis=1)
        elif cfg.cls_position != "none":
            at = cls_positions(self.config, f_grid * t_grid)[0]
            cls = jnp.broadcast_to(self.cls_token[...] + pos[:, :1], (batch, 1, dim))
            patches = patches.astype(cls.dtype)
            tokens = jnp.concatenate([patches[:, :at], cls, patches[:, at:]], axis=1)
        else:
            tokens = patches
        return self.pos_drop(tokens)

    def encode(self, tokens: jax.Array, *, pool_layers: bool = False) -> tuple[jax.Array, jax.Array | None]:
        """Runs the Mamba blocks (one ``nnx.scan`` over the stacked layers) and the final norm.

        Tokens (B, L, D) -> the final tokens (B, L, D) float32 and, with ``pool_layers``,
        (depth, B, D): after each block, the residual stream (what the next block normalises,
        before any norm) pooled by :func:`pool_tokens` (None without).
        """
        cfg = self.config
        rates = np.concatenate([drop_path_rates(cfg), [cfg.drop_path_rate]]).astype(np.float32)
        masks = self.drop_path.masks(rates, tokens.shape[0])

        def body(layer: Block, carry: tuple[jax.Array, jax.Array], keep_mask: jax.Array):
            hidden, residual = layer(*carry, keep_mask)
            pooled = pool_tokens(cfg, residual + hidden.astype(residual.dtype)) if pool_layers else None
            return (hidden, residual), pooled

        if cfg.remat != "none":
            body = nnx.remat(body, policy=_REMAT[cfg.remat], prevent_cse=False, graph=False)
        body = nnx.scan(body, in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0), graph=False)

        hidden = tokens.astype(cfg.dtype)  # the blocks' output dtype, so the scan carry keeps its type
        residual = jnp.zeros(tokens.shape, jnp.float32 if cfg.residual_in_fp32 else hidden.dtype)
        (hidden, residual), layers = body(self.layers, (hidden, residual), masks[:-1])
        residual = residual + hidden * masks[-1].astype(hidden.dtype)
        return self.norm_f(residual), layers

    def patch_tokens(self, hidden: jax.Array, t_grid: int | None = None) -> jax.Array:
        """Tokens (B, L, D) -> the patch tokens on the (frequency, time) grid (B, F', T', D), cls left out;
        ``t_grid`` time steps (default: the config's)."""
        cfg = self.config
        f_grid, default_t = cfg.patch_grid
        t_grid = t_grid or default_t
        keep = np.setdiff1d(np.arange(hidden.shape[1]), cls_positions(self.config, f_grid * t_grid))
        patches = hidden[:, keep]
        if cfg.transpose_token_sequence:  # time-major: (B, T', F', D).
            return jnp.swapaxes(patches.reshape(hidden.shape[0], t_grid, f_grid, -1), 1, 2)
        return patches.reshape(hidden.shape[0], f_grid, t_grid, -1)

    def _head(self, features: jax.Array) -> jax.Array:
        """The head's input -> logits (B, classes): the head (the input itself without one, as the
        original's ``nn.Identity`` head gives), maxed over the tokens for pool "max"."""
        cfg = self.config
        logits = self.head(features) if cfg.num_classes > 0 else features
        return logits.max(axis=1) if cfg.max_pooled else logits

    def _check_input(self, x: jax.Array) -> None:
        cfg = self.config
        if x.ndim != 3 or x.shape[1:] != (cfg.audio_length, cfg.num_mel_bins):
            raise ValueError(
                f"AudioMamba expects (batch, {cfg.audio_length}, {cfg.num_mel_bins}) features, got {x.shape}."
            )

    def _pass(self, x: jax.Array, pool_layers: bool) -> dict[str, jax.Array]:
        cfg = self.config
        self._check_input(x)
        hidden, layers = self.encode(self.tokens(x), pool_layers=pool_layers)
        pooled = pool_tokens(cfg, hidden)
        features = hidden if cfg.max_pooled else pooled
        return {"logits": self._head(features), "features": features, "pooled": pooled, "layers": layers,
                "hidden": hidden}

    def outputs(self, x: jax.Array) -> dict[str, jax.Array]:
        """Fbank features (B, T, F), normalised -> every output of one pass.

        Returns:
          ``"logits"`` (B, classes); ``"features"`` the head's input (the original's
          ``return_features``): the pooled tokens (B, D), or every final token (B, L, D) for
          pool "max"; ``"pooled"`` (B, D) the final tokens pooled by :func:`pool_tokens`;
          ``"layers"`` (depth, B, D) each block's residual stream pooled (see :meth:`encode`);
          ``"tokens"`` (B, F', T', D) the final patch tokens on their grid. Under ``jit`` XLA
          drops what the caller does not read.
        """
        out = self._pass(x, pool_layers=True)
        out["tokens"] = self.patch_tokens(out.pop("hidden"))
        return out

    def frame_logits(self, x: jax.Array) -> jax.Array:
        """Fbank features (B, T, F), normalised -> the head on every time step (B, T', classes): each time
        step's final patch tokens averaged over frequency (the cls token left out), as :meth:`whole` reads a
        recording; event detection's training output (:mod:`aum_jax.training.event_detection`)."""
        self._check_input(x)
        hidden, _ = self.encode(self.tokens(x))
        frames = self.patch_tokens(hidden).mean(axis=1)  # (B, T', D)
        return self.head(frames) if self.config.num_classes > 0 else frames

    def whole(self, x: jax.Array, pos_embed: str = "interpolate") -> dict[str, jax.Array]:
        """Fbank features (B, T, F) of a whole recording, normalised, in one pass.

        T is the config's ``audio_length`` plus any whole number of time strides (at least one
        patch); the position embedding is extended along time by ``pos_embed`` (``WHOLE_POS_EMBEDS``).

        Returns:
          ``"logits"`` (B, classes): the head read as ``model(x)`` reads a clip (on the cls token,
          in the middle of the whole sequence); ``"frame_logits"`` (B, T', classes):
          the head on each time step's patch tokens, averaged over frequency (after the final norm);
          ``"frames"`` (B, T', D) those averaged tokens.
        """
        cfg = self.config
        f_grid, t_grid = _grid(cfg, x.shape[1])
        if x.ndim != 3 or x.shape[2] != cfg.num_mel_bins or t_grid < 1:
            raise ValueError(f"AudioMamba.whole expects (batch, frames, {cfg.num_mel_bins}) features with frames = "
                             f"{cfg.patch_size[1]} + a multiple of {cfg.strides[1]}, got {x.shape}.")
        if pos_embed not in WHOLE_POS_EMBEDS:
            raise ValueError(f"unknown pos_embed {pos_embed!r}; use one of {', '.join(WHOLE_POS_EMBEDS)}")
        hidden, _ = self.encode(self.tokens(x, pos_embed=pos_embed))
        pooled = pool_tokens(cfg, hidden, f_grid * t_grid)
        frames = self.patch_tokens(hidden, t_grid).mean(axis=1)  # (B, T', D)
        head = self.head if cfg.num_classes > 0 else (lambda v: v)
        logits = self._head(hidden if cfg.max_pooled else pooled)  # as model(x) reads a clip
        return {"logits": logits, "frame_logits": head(frames), "frames": frames}

    def whole_tokens(self, frames: int) -> int:
        """The length of :meth:`whole`'s token sequence over ``frames`` frames (a valid length), cls tokens included."""
        f_grid, t_grid = _grid(self.config, frames)
        return f_grid * t_grid + self.config.num_cls_tokens

    def one_pass_problems(self) -> list[str]:
        """Why this model's tokens are not a sequence of whole time slices that any length of audio gives."""
        cfg = self.config
        return [why for bad, why in (
            (cfg.patch_size[0] != cfg.num_mel_bins or cfg.strides[0] != cfg.num_mel_bins,
             f"a patch spans {cfg.patch_size[0]} of the {cfg.num_mel_bins} mel bins (a token must be a whole time slice)"),
            (cfg.strides[1] != cfg.patch_size[1], f"time slices overlap (strides {cfg.strides[1]}, patch {cfg.patch_size[1]})"),
            (cfg.position != "none", f"position={cfg.position!r} (a table over the training length)"),
            (cfg.cls_position != "none", f"cls_position={cfg.cls_position!r} (a cls token reads the whole sequence)"),
        ) if bad]

    def check_streams(self) -> None:
        """Raises ValueError unless this model reads audio as a stream (:meth:`stream`): tokens that are whole
        time slices (one patch spans every mel bin; slices that do not overlap), no position table, no cls
        token, and a causal mixer."""
        cfg = self.config
        problems = self.one_pass_problems()
        if cfg.bimamba_type != "none":
            problems.append(f"bimamba_type={cfg.bimamba_type!r} (a bidirectional mixer reads the future)")
        if problems:
            raise ValueError("this model does not stream: " + "; ".join(problems))

    def check_reads_in_chunks(self) -> None:
        """Raises ValueError unless this model's whole pass can be read a piece at a time
        (:func:`aum_jax.inference.whole.read_in_chunks`): the tokens of a model that streams, with a causal
        (Fo-Fo) or a Bi-Bi mixer, whose backward branch has a conv of its own."""
        cfg = self.config
        problems = self.one_pass_problems()
        if cfg.bimamba_type == "v1":
            problems.append("bimamba_type='v1' (its backward scan reads the forward conv's output)")
        if problems:
            raise ValueError("this model's whole pass is not read in chunks: " + "; ".join(problems))

    def slice_tokens(self, x: jax.Array) -> jax.Array:
        """Fbank features (B, n * t, F) of ``n`` whole time slices of ``t = patch_size[1]`` frames, normalised,
        of a model whose tokens are time slices -> their tokens (B, n, D) in the config's dtype (the patch
        embedding reads each slice alone: any piece of a recording is embedded on its own)."""
        tokens = self.patch_embed(jnp.swapaxes(x, 1, 2)[..., None]).reshape(x.shape[0], -1, self.config.embed_dim)
        return tokens.astype(self.config.dtype)

    def frame_outputs(self, hidden: jax.Array, residual: jax.Array) -> dict[str, jax.Array]:
        """The last block's hidden and residual streams (B, n, D) of time-slice tokens -> ``{"frame_logits":
        (B, n, classes), "frames": (B, n, D)}`` as :meth:`whole` gives them (the final norm, the head)."""
        frames = self.norm_f(residual + hidden.astype(residual.dtype))
        head = self.head if self.config.num_classes > 0 else (lambda v: v)
        return {"frame_logits": head(frames), "frames": frames}

    def pooled_logits(self, frames: jax.Array) -> jax.Array:
        """The final tokens (B, n, D) of a model without a cls token (``frames`` of :meth:`frame_outputs`) ->
        :meth:`whole`'s ``"logits"`` (B, classes): the head on the tokens pooled as the config says."""
        cfg = self.config
        return self._head(frames if cfg.max_pooled else pool_tokens(cfg, frames, frames.shape[1]))

    def initial_state(self, batch: int) -> Any:
        """The state a stream starts from (:meth:`stream`): every block's mixer state, stacked (depth, ...)."""
        self.check_streams()
        one = self.layers.mixer.initial_state(batch)
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (self.config.depth, *x.shape)), one)

    def stream(self, x: jax.Array, state: Any) -> tuple[dict[str, jax.Array], Any]:
        """A piece of a recording, fbank features (B, n * t, F) normalised (``n`` whole time slices of
        ``t = patch_size[1]`` frames), read forward in time from ``state`` (what the previous piece left,
        or :meth:`initial_state`) -> ``{"frame_logits": (B, n, classes), "frames": (B, n, D)}`` and the
        state after it. In eval mode; the pieces' rows, joined, are :meth:`whole`'s on the whole recording.
        """
        cfg = self.config
        t = cfg.patch_size[1]
        if x.ndim != 3 or x.shape[2] != cfg.num_mel_bins or x.shape[1] % t:
            raise ValueError(f"AudioMamba.stream expects (batch, a multiple of {t} frames, {cfg.num_mel_bins}) "
                             f"features, got {x.shape}")
        hidden = self.slice_tokens(x)

        def body(layer: Block, carry: tuple[jax.Array, jax.Array], layer_state: Any):
            hidden, residual, layer_state = layer.stream(*carry, layer_state)
            return (hidden, residual), layer_state

        body = nnx.scan(body, in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0), graph=False)
        residual = jnp.zeros(hidden.shape, jnp.float32 if cfg.residual_in_fp32 else hidden.dtype)
        (hidden, residual), state = body(self.layers, (hidden, residual), state)
        return self.frame_outputs(hidden, residual), state

    def masked_patch_tokens(self, x: jax.Array, mask: jax.Array, mask_token: jax.Array) -> jax.Array:
        """Fbank features (B, T, F), normalised, with the patches of ``mask`` (B, N) bool replaced by
        ``mask_token`` (1, 1, D) (see :meth:`tokens`) -> the final patch tokens (B, N, D) float32, in
        frequency-major order whatever ``transpose_token_sequence``."""
        self._check_input(x)
        hidden, _ = self.encode(self.tokens(x, mask, mask_token))
        grid = self.patch_tokens(hidden)
        return grid.reshape(grid.shape[0], -1, grid.shape[-1])

    def __call__(self, x: jax.Array) -> jax.Array:
        """Fbank features (B, T, F), normalised -> logits (B, classes); without a head
        (``num_classes=0``) the features (B, D)."""
        return self._pass(x, pool_layers=False)["logits"]


def _grid(config: AuMConfig, frames: int) -> tuple[int, int]:
    """The patch grid (F', T') of an input of ``frames`` frames; T' < 1 when it is not a valid length."""
    f_grid = config.patch_grid[0]
    patch, stride = config.patch_size[1], config.strides[1]
    if frames < patch or (frames - patch) % stride:
        return f_grid, 0
    return f_grid, (frames - patch) // stride + 1


def _extended_pos(pos: jax.Array, grid: tuple[int, int], t_grid: int, scheme: str) -> jax.Array:
    """The patches' position embedding (1, F' * T'_config, D) for ``t_grid`` time steps: itself at the
    config's length, else extended along time by ``scheme`` (``WHOLE_POS_EMBEDS``)."""
    f_grid, t_config = grid
    if t_grid == t_config:
        return pos
    table = pos.reshape(f_grid, t_config, -1)
    if scheme == "tile":
        table = table[:, np.arange(t_grid) % t_config]
    else:  # "interpolate"; jax.image.resize's linear resize is F.interpolate's bilinear one along time.
        table = jax.image.resize(table, (f_grid, t_grid, table.shape[-1]), method="linear", antialias=True)
    return table.reshape(1, f_grid * t_grid, -1)


def cls_positions(config: AuMConfig, num_patches: int | None = None) -> list[int]:
    """Indices of the cls token(s) in the token sequence of ``num_patches`` patches (default: the config's)."""
    n = num_patches or config.num_patches
    return {"middle": [n // 2], "head": [0], "end": [n], "double": [0, n + 1], "none": []}[config.cls_position]


def pool_tokens(config: AuMConfig, hidden: jax.Array, num_patches: int | None = None) -> jax.Array:
    """Tokens (B, L, D) of ``num_patches`` patches (default: the config's) -> (B, D): the cls token (the
    mean of two), else the config's pool.

    A model pooling by "max" takes its max over the head's outputs; its pooled tokens are
    their mean.
    """
    positions = cls_positions(config, num_patches)
    if positions:
        return jnp.mean(jnp.stack([hidden[:, p] for p in positions]), axis=0)
    return hidden[:, -1] if config.pool == "last" else hidden.mean(axis=1)


# What a block keeps for its backward pass; the rest (conv, gates, the scan) is recomputed,
# as the original's fused mamba_inner_fn recomputes its conv and delta.
_REMAT = {
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # One (B, L, D) float32 tensor more per scan: the backward of a pure-JAX or CPU scan then
    # does not re-run its forward (the Pallas kernels' backward needs their forward's states).
    "dots_scan": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(SCAN_READOUT)),
    "full": jax.checkpoint_policies.nothing_saveable,
}


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters, counted as PyTorch counts ``model.parameters()``."""
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def init_model(config: AuMConfig, seed: int = 0, sharding: jax.sharding.Sharding | None = None, *,
               module: Callable[..., nnx.Module] = AudioMamba) -> nnx.Module:
    """A freshly initialised ``module(config, rngs=nnx.Rngs(seed))`` (the AudioMamba, or a module
    built around one), built under ``jit`` (fast for base sizes).

    With ``sharding`` every variable is created directly with it (e.g. replicated over a
    mesh), on all processes at once, with no copy through the host.
    """

    def build() -> nnx.Module:
        model = module(config, rngs=nnx.Rngs(seed))
        if sharding is not None:
            nnx.update(model, jax.lax.with_sharding_constraint(nnx.state(model), sharding))
        return model

    return nnx.jit(build)()


@dataclasses.dataclass(frozen=True)
class Skeleton:
    """A module's structure without its parameters (:func:`skeleton`).

    Attributes:
      graphdef: the module's graph, to merge with ``params`` and ``others``.
      params: its ``nnx.Param`` state as ``jax.ShapeDtypeStruct`` leaves (what a checkpoint restores into).
      others: its other variables (the RNG streams), with the values ``init_model`` gives them.
    """

    graphdef: nnx.GraphDef
    params: nnx.State
    others: nnx.State


def skeleton(config: AuMConfig, seed: int = 0, module: Callable[..., nnx.Module] = AudioMamba) -> Skeleton:
    """``module(config, rngs=nnx.Rngs(seed))``'s :class:`Skeleton`, built by tracing the module once.

    The one trace gives the graph and the parameters' shapes; the program it compiles returns only
    the RNG state, so XLA drops the parameter initialisers as dead code and no parameter is computed.
    Kept per (config, seed, module) for the process, and on disk for later ones
    (:func:`aum_jax.core.warm_start.memoized`, keyed by the config and aum-jax's source).
    """
    return _skeleton(config, seed, module)


@functools.lru_cache(maxsize=8)
def _skeleton(config: AuMConfig, seed: int, module: Callable[..., nnx.Module]) -> Skeleton:
    # NNX keeps no traced module between processes, and tracing a 24-block model's initialisers takes
    # seconds (most of a warm predict's wait): the skeleton is kept on disk, keyed by the config and the code.
    name = f"{module.__module__}.{module.__qualname__}"
    return warm_start.memoized("skeleton", f"{name}\n{seed}\n{config!r}", lambda: _trace_skeleton(config, seed, module))


def _trace_skeleton(config: AuMConfig, seed: int, module: Callable[..., nnx.Module]) -> Skeleton:
    traced: dict[str, Any] = {}

    def build() -> nnx.State:
        graphdef, params, others = nnx.split(module(config, rngs=nnx.Rngs(seed)), nnx.Param, ...)
        traced["graphdef"] = graphdef
        traced["params"] = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
        return others

    others = jax.jit(build).trace().lower().compile()()
    return Skeleton(traced["graphdef"], traced["params"], others)


def model_with_params(config: AuMConfig, params: nnx.State, seed: int = 0, *,
                      module: Callable[..., nnx.Module] = AudioMamba) -> nnx.Module:
    """``module(config)`` holding ``params`` (its ``nnx.Param`` state, e.g. read from a checkpoint), in place.

    Its other variables (the RNG streams) are those of ``init_model(config, seed)``; the initial
    parameters are never computed (:func:`skeleton`), so no initialiser runs and no second copy of the
    weights is held: the model's parameters are the arrays of ``params``.
    """
    frame = skeleton(config, seed, module)
    others = jax.tree.map(lambda x: x, frame.others)  # new Variables of the same arrays: models never share RNG state
    return nnx.merge(frame.graphdef, params, others)
