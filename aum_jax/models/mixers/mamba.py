"""The Mamba token mixer of AuM in its three variants (mixer kind ``"mamba"``).

- ``bimamba_type="none"`` (Fo-Fo): one causal scan, forward in time.
- ``bimamba_type="v1"`` (Fo-Bi): the causal conv runs once, forward. A second scan runs
  backward in time over the same conv output, delta, B, C and z, with its own ``A_b_log``
  and the shared ``D``, ``x_proj`` and ``dt_proj``. The output is
  ``out_proj(y_f + flip(scan(flip(...))))``.
- ``bimamba_type="v2"`` (Bi-Bi): the backward branch has its own conv, ``x_proj``,
  ``dt_proj``, ``D`` and ``A_b_log``. The original feeds it the flipped ``in_proj`` output;
  here its conv runs anti-causally over the unflipped sequence, which is the same function,
  so no flipped copy is ever made. The output is ``out_proj((y_f + y_b) / 2)`` (the sum
  when ``if_devide_out`` is off).

Both directions go to ``aum_jax.ops.bidirectional_scan`` together, which the GPU kernel
runs in one launch, reading time backwards for the second. In eval mode (``model.eval()``), with
a scan implementation that has inference kernels (the C++ one), the conv with its SiLU and the
scan with everything between it and ``out_proj`` run fused (``aum_jax.ops.conv_silu``,
``aum_jax.ops.fused_scan``): the same function, with the training path's gradient.

Parameter names follow the original module tree, so that a PyTorch key such as
``layers.3.mixer.x_proj_b.weight`` has an obvious NNX counterpart.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aum_jax.models.layers import CausalConv1d, torch_linear_init
from aum_jax.models.torch_layout import CONV1D, Layout
from aum_jax.ops import bidirectional_scan, conv_silu, fused_scan, has_fused_inference, selective_scan_from_state
from aum_jax.ops.conv import causal_conv_from_history

if TYPE_CHECKING:  # the config module imports the mixer registry, which imports this module.
    from aum_jax.models.config import AuMConfig

# The AuMConfig fields the Mamba mixer reads (its parameter shapes and forward pass).
FIELDS = ("bimamba_type", "d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init_floor", "dt_scale",
          "conv_bias", "proj_bias", "if_devide_out")


def _ssm_projections(
    config: AuMConfig, rngs: nnx.Rngs, *, dt_init: bool = True
) -> tuple[nnx.Linear, nnx.Linear]:
    """The x_proj (D_inner -> dt_rank + 2N) and dt_proj (dt_rank -> D_inner) of one direction.

    With ``dt_init`` (the forward branch) dt_proj gets Mamba's special initialisation;
    without it (the Bi-Bi backward branch, as in the original) a PyTorch-default weight and
    a zero bias, since the original's model-wide init zeroes every Linear bias it has not
    marked as special.
    """
    d_inner, rank, n = config.d_inner, config.resolved_dt_rank, config.d_state
    dtype = jnp.dtype(config.dtype)
    x_proj = nnx.Linear(
        d_inner, rank + 2 * n, use_bias=False, dtype=dtype,
        kernel_init=torch_linear_init(), rngs=rngs,
    )
    dt_scale = config.dt_scale if dt_init else 1.0  # U(+-dt_scale / sqrt(dt_rank)), Mamba's dt_init="random"
    dt_proj = nnx.Linear(
        rank, d_inner, dtype=dtype,
        kernel_init=torch_linear_init(dt_scale),
        bias_init=_dt_bias_init(config) if dt_init else nnx.initializers.zeros, rngs=rngs,
    )
    return x_proj, dt_proj


def _dt_bias_init(config: AuMConfig) -> nnx.Initializer:
    """dt drawn log-uniform in [dt_min, dt_max], floored, stored as softplus^-1(dt)."""

    def init(key, shape, dtype=jnp.float32):
        lo, hi = math.log(config.dt_min), math.log(config.dt_max)
        dt = jnp.exp(jax.random.uniform(key, shape, jnp.float32) * (hi - lo) + lo)
        dt = jnp.maximum(dt, config.dt_init_floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

    return init


def _s4d_real_a_log(config: AuMConfig) -> nnx.Param:
    """A_log with A = -(1, 2, ..., N) for every channel: (D_inner, N)."""
    a = jnp.broadcast_to(jnp.arange(1, config.d_state + 1, dtype=jnp.float32), (config.d_inner, config.d_state))
    return nnx.Param(jnp.log(a))


class MambaState(NamedTuple):
    """What a causal Mamba mixer carries from one piece of a sequence to the next: the causal conv's
    last ``d_conv - 1`` inputs (B, K - 1, Di) and the SSM state (B, Di, N), float32."""

    conv: jax.Array
    ssm: jax.Array


class Mamba(nnx.Module):
    """The Mamba mixer: (B, L, D) -> (B, L, D)."""

    def __init__(self, config: AuMConfig, *, rngs: nnx.Rngs):
        self.config = config
        d_model, d_inner = config.embed_dim, config.d_inner
        dtype = jnp.dtype(config.dtype)
        self.in_proj = nnx.Linear(
            d_model, 2 * d_inner, use_bias=config.proj_bias, dtype=dtype,
            kernel_init=torch_linear_init(), bias_init=nnx.initializers.zeros, rngs=rngs,
        )
        self.conv1d = CausalConv1d(d_inner, config.d_conv, config.conv_bias, rngs=rngs)
        self.x_proj, self.dt_proj = _ssm_projections(config, rngs)
        self.A_log = _s4d_real_a_log(config)
        self.D = nnx.Param(jnp.ones((d_inner,), jnp.float32))
        if config.bimamba_type in ("v1", "v2"):
            self.A_b_log = _s4d_real_a_log(config)
        if config.bimamba_type == "v2":
            self.conv1d_b = CausalConv1d(d_inner, config.d_conv, config.conv_bias, rngs=rngs)
            self.x_proj_b, self.dt_proj_b = _ssm_projections(config, rngs, dt_init=False)
            self.D_b = nnx.Param(jnp.ones((d_inner,), jnp.float32))
        self.deterministic = False  # eval mode (set by model.eval()): the fused inference kernels, where there are
        # GPT-2 style: out_proj is PyTorch-default initialised, then scaled by 1/sqrt(depth).
        self.out_proj = nnx.Linear(
            d_inner, d_model, use_bias=config.proj_bias, dtype=dtype,
            kernel_init=torch_linear_init(1 / math.sqrt(config.depth)),
            bias_init=nnx.initializers.zeros, rngs=rngs,
        )

    def set_view(self, deterministic: bool | None = None):
        """``nnx.view(model, deterministic=True)``: an eval-mode view (the fused inference kernels) of the same weights."""
        if deterministic is not None:
            self.deterministic = deterministic

    def _ssm_inputs(
        self, x: jax.Array, x_proj: nnx.Linear, dt_proj: nnx.Linear
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Conv output (B, L, Di) -> delta before bias and softplus (B, L, Di), B and C (B, L, N)."""
        rank, n = self.config.resolved_dt_rank, self.config.d_state
        dt, b, c = jnp.split(x_proj(x), [rank, rank + n], axis=-1)
        return dt @ dt_proj.kernel[...].astype(dt.dtype), b, c

    def _conv(self, xz: jax.Array, conv: CausalConv1d, *, reverse: bool, fused: bool) -> jax.Array:
        """silu(conv(x)) of in_proj's output xz (B, L, 2 Di) -> (B, L, Di): the inference kernel reads x in place."""
        d_inner = self.config.d_inner
        if not fused:
            return jax.nn.silu(conv(xz[..., :d_inner], reverse=reverse))
        bias = None if conv.bias is None else conv.bias[...]
        return conv_silu(xz, conv.kernel[...], bias, dim=d_inner, reverse=reverse,
                         impl=self.config.scan_impl).astype(xz.dtype)

    def initial_state(self, batch: int) -> MambaState:
        """The state a stream starts from: zeros (:meth:`stream`)."""
        cfg = self.config
        return MambaState(jnp.zeros((batch, cfg.d_conv - 1, cfg.d_inner), jnp.float32),
                          jnp.zeros((batch, cfg.d_inner, cfg.d_state), jnp.float32))

    def stream(self, hidden: jax.Array, state: MambaState) -> tuple[jax.Array, MambaState]:
        """A piece (B, L, D) of a longer sequence, read forward in time from ``state`` (what the previous
        piece left, or :meth:`initial_state`) -> its output (B, L, D) and the state after it.

        The pieces' outputs, joined, are this mixer's output on the whole sequence: the causal (Fo-Fo,
        ``bimamba_type="none"``) mixer reads a sequence of any length in a fixed amount of memory. A
        bidirectional mixer reads each step's future, so it has no stream.
        """
        cfg = self.config
        if cfg.bimamba_type != "none":
            raise ValueError(f"a bidirectional Mamba mixer (bimamba_type={cfg.bimamba_type!r}) reads the whole "
                             "sequence; only the causal one (bimamba_type='none', Fo-Fo) streams")
        xz = self.in_proj(hidden)  # (B, L, 2 Di): x, then z
        bias = None if self.conv1d.bias is None else self.conv1d.bias[...]
        x, history = causal_conv_from_history(xz[..., :cfg.d_inner], state.conv, self.conv1d.kernel[...], bias)
        x = jax.nn.silu(x)
        delta, b, c = self._ssm_inputs(x, self.x_proj, self.dt_proj)
        y, ssm = selective_scan_from_state(x, delta, -jnp.exp(self.A_log[...]), b, c, self.D[...],
                                           xz[..., cfg.d_inner:], self.dt_proj.bias[...], state.ssm,
                                           impl=cfg.scan_impl)
        return self.out_proj(y.astype(xz.dtype)), MambaState(history.astype(jnp.float32), ssm)

    def direction(self, hidden: jax.Array, state: MambaState, valid: jax.Array, *,
                  reverse: bool) -> tuple[jax.Array, MambaState]:
        """One direction of the mixer over a piece (B, L, D) of a longer sequence, the whole sequence read in
        pieces from its start (forward) or from its end (``reverse``: the Bi-Bi backward branch, ``conv1d_b``,
        ``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b``) -> that direction's gated output (B, L, Di) and
        the state after the piece (:meth:`initial_state` before the first; for ``reverse`` its conv part
        holds the inputs after the piece, latest first).

        Only the piece's first ``valid`` steps (an int32 scalar) are the sequence; the steps after them lie
        past its end (the piece is its last): zero inputs, as the conv reads past the end, and zero step
        sizes, which leave the scan's state as it is, so that a reverse read starts from the sequence's true
        end in a piece of the one compiled size. :meth:`join` sums the directions' outputs; with the pieces'
        outputs joined, that is this mixer on the whole sequence.
        """
        cfg = self.config
        d_inner = cfg.d_inner
        if reverse:
            branch = (self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b)
        else:
            branch = (self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        conv, x_proj, dt_proj, a_log, skip = branch
        real = (jnp.arange(hidden.shape[1]) < valid)[None, :, None]
        xz = jnp.where(real, self.in_proj(hidden), 0)  # (B, L, 2 Di): x, then z; padding past the end is zeros.
        if reverse:  # the backward branch is the forward one on the time-flipped sequence (its conv: causal_conv's).
            xz, real = jnp.flip(xz, axis=1), jnp.flip(real, axis=1)
        bias = None if conv.bias is None else conv.bias[...]
        x, history = causal_conv_from_history(xz[..., :d_inner], state.conv, conv.kernel[...], bias)
        x = jax.nn.silu(x)
        delta, b, c = self._ssm_inputs(x, x_proj, dt_proj)
        # delta = 0 at a padded step: decay exp(0) = 1 and no input, so the state passes it unchanged.
        delta = jax.nn.softplus(delta.astype(jnp.float32) + dt_proj.bias[...].astype(jnp.float32))
        delta = jnp.where(real, delta, 0)
        y, ssm = selective_scan_from_state(x, delta, -jnp.exp(a_log[...]), b, c, skip[...], xz[..., d_inner:], None,
                                           state.ssm, delta_softplus=False, impl=cfg.scan_impl)
        if reverse:
            y = jnp.flip(y, axis=1)
        return y, MambaState(history.astype(jnp.float32), ssm)

    def join(self, forward: jax.Array, backward: jax.Array | None) -> jax.Array:
        """The directions' outputs (B, L, Di) of :meth:`direction` (``backward`` None for the causal mixer) -> the
        mixer's output (B, L, D): ``out_proj`` of their sum, halved with ``if_devide_out`` (as :meth:`__call__`)."""
        y = forward
        if backward is not None:
            y = y + backward
            if self.config.if_devide_out:
                y = y * 0.5
        return self.out_proj(y.astype(self.config.dtype))

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """(B, L, D) -> (B, L, D)."""
        cfg = self.config
        fused = self.deterministic and has_fused_inference(cfg.scan_impl)
        xz = self.in_proj(hidden)  # (B, L, 2 Di): x, then z
        x_f = self._conv(xz, self.conv1d, reverse=False, fused=fused)
        delta_f, b_f, c_f = self._ssm_inputs(x_f, self.x_proj, self.dt_proj)
        us, deltas, Bs, Cs = (x_f,), (delta_f,), (b_f,), (c_f,)
        As, Ds, biases = (-jnp.exp(self.A_log[...]),), (self.D[...],), (self.dt_proj.bias[...],)
        scale = 1.0
        if cfg.bimamba_type in ("v1", "v2"):
            As += (-jnp.exp(self.A_b_log[...]),)
        if cfg.bimamba_type == "v2":
            x_b = self._conv(xz, self.conv1d_b, reverse=True, fused=fused)
            delta_b, b_b, c_b = self._ssm_inputs(x_b, self.x_proj_b, self.dt_proj_b)
            us, deltas, Bs, Cs = us + (x_b,), deltas + (delta_b,), Bs + (b_b,), Cs + (c_b,)
            Ds, biases = Ds + (self.D_b[...],), biases + (self.dt_proj_b.bias[...],)
            scale = 0.5 if cfg.if_devide_out else 1.0
        if fused:
            y = fused_scan(us, deltas, As, Bs, Cs, Ds, xz, biases, scale=scale, impl=cfg.scan_impl)
        else:
            y = bidirectional_scan(us, deltas, As, Bs, Cs, Ds, xz[..., cfg.d_inner:], biases, delta_softplus=True,
                                   scale=scale, impl=cfg.scan_impl, chunk_size=cfg.scan_chunk_size)
        return self.out_proj(y.astype(xz.dtype))


def torch_layout(name: str) -> Layout | None:
    """The layout of the original's mixer tensor ``name`` (under ``mixer.``) where it is not the default:
    the depthwise convs' (C, 1, W) weights."""
    return CONV1D if re.fullmatch(r"conv1d(_b)?\.weight", name) else None


def infer_fields(mixer: dict[str, np.ndarray]) -> dict[str, object]:
    """The mixer's config fields read off one block's original tensors (``{name under mixer.: array}``).

    Raises:
      KeyError: a tensor every Mamba mixer has is missing (the caller names the checkpoint).
    """
    in_proj, a_log = mixer["in_proj.weight"], mixer["A_log"]
    return dict(
        bimamba_type="v2" if "conv1d_b.weight" in mixer else "v1" if "A_b_log" in mixer else "none",
        d_state=int(a_log.shape[1]),
        d_conv=int(mixer["conv1d.weight"].shape[-1]),
        expand=int(in_proj.shape[0] // 2 // in_proj.shape[1]),
        dt_rank=int(mixer["dt_proj.weight"].shape[1]),
        conv_bias="conv1d.bias" in mixer,
        proj_bias="in_proj.bias" in mixer,
    )
