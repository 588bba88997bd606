"""What a selective-scan launch looks like: its static shape, its block sizes, and row access.

A launch scans ``K`` directions (1, or 2 for AuM's Fo-Bi and Bi-Bi blocks) of the recurrence

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t,    y_t = <h_t, C_t>

over (B, L, D) inputs, channels last. Direction 0 walks time forward; direction 1 walks it
backward, reading the same time-ordered tensors from the end, so no flipped copies exist.
Each per-direction input is given either once, shared by every direction (Fo-Bi shares u,
delta, B, C, D and the delta bias), or once per direction (Bi-Bi). ``z`` is always shared.

One Pallas program handles one batch element and one tile of ``block_d`` channels, and
runs every direction in turn, keeping its (block_d, N) state in registers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

GPU_SMS = 132  # streaming multiprocessors of an H100 SXM: the grid should cover them several times
STATE_ELEMS_PER_PROGRAM = 256  # (block_d x N') state elements a program owns: 16 channels at N = 16
# Threads per program follow the tile, so that a thread holds this many state elements: with
# them, the rows in flight and their addresses, each kernel stays within 128 registers (no
# spills, >= 25 % occupancy on sm_80 and sm_90; scripts/kernel_report.py measures it).
STATE_ELEMS_PER_THREAD_FWD = 4
STATE_ELEMS_PER_THREAD_BWD = 2
FWD_UNROLL = 4  # time steps whose rows the forward loads together (16 would take 255 registers and spill)
BWD_UNROLL = 2  # states the backward recomputes into registers per sub-block (4 would take 168 registers)
CHUNK = 128  # steps between the boundary states the forward keeps for the backward


def next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@dataclasses.dataclass(frozen=True)
class ScanLayout:
    """The static shape of one launch; counts of 1 mean "shared by all directions"."""

    batch: int
    length: int  # L
    dim: int  # D, channels
    d_state: int  # N
    n_dirs: int  # K: 1 (forward) or 2 (forward, then reverse)
    n_u: int  # tensors given for each of u, delta, B, C: 1 or K
    n_d: int  # D skips given: 0, 1 or K
    n_bias: int  # delta biases given: 0, 1 or K
    has_z: bool  # gate the output by silu(z)
    delta_softplus: bool  # delta <- softplus(delta + bias), cut off at 20 as the CUDA kernel does
    scale: float  # the sum over directions is multiplied by this (Bi-Bi's if_devide_out: 0.5)

    def __post_init__(self) -> None:
        if self.n_dirs not in (1, 2):
            raise ValueError(f"a launch scans 1 or 2 directions, not {self.n_dirs}")
        for name in ("n_u", "n_d", "n_bias"):
            count = getattr(self, name)
            if count not in ({1, self.n_dirs} | ({0} if name != "n_u" else set())):
                raise ValueError(f"{name}={count} must be {'0, ' if name != 'n_u' else ''}1 or {self.n_dirs}")

    @property
    def n_state(self) -> int:
        """N padded to a power of two, as Triton tensors need."""
        return next_pow2(self.d_state)

    @staticmethod
    def pick(count: int, k: int) -> int:
        """Index of direction ``k``'s tensor among ``count`` given ones."""
        return 0 if count == 1 else k


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    block_d: int  # channels per program
    num_warps: int  # warps per program
    unroll: int  # time steps whose rows are loaded together, then computed in turn
    chunk: int  # steps between the boundary states the forward pass keeps for the backward


def _block_d(layout: ScanLayout) -> int:
    """As many channels as fill STATE_ELEMS_PER_PROGRAM, fewer while the grid is too small for the GPU
    (a symbolic batch, as a serving export has, counts as large)."""
    block = max(1, STATE_ELEMS_PER_PROGRAM // layout.n_state)
    block = min(block, next_pow2(layout.dim))
    while isinstance(layout.batch, int) and block > 4 and layout.batch * pl.cdiv(layout.dim, block) < 4 * GPU_SMS:
        block //= 2
    return block


def _num_warps(block_d: int, layout: ScanLayout, elems_per_thread: int) -> int:
    return max(1, block_d * layout.n_state // (32 * elems_per_thread))


INTERPRET_UNROLL = 2  # interpret mode compiles the unrolled kernel with XLA: keep it small


def _interpret_blocks(layout: ScanLayout) -> BlockConfig:
    return BlockConfig(block_d=_block_d(layout), num_warps=1, unroll=INTERPRET_UNROLL, chunk=CHUNK)


def forward_blocks(layout: ScanLayout, interpret: bool = False) -> BlockConfig:
    """The forward pass: FWD_UNROLL rows in flight, STATE_ELEMS_PER_THREAD_FWD state elements a thread."""
    if interpret:
        return _interpret_blocks(layout)
    block = _block_d(layout)
    return BlockConfig(block, _num_warps(block, layout, STATE_ELEMS_PER_THREAD_FWD), FWD_UNROLL, CHUNK)


def backward_blocks(layout: ScanLayout, interpret: bool = False) -> BlockConfig:
    """The backward pass: BWD_UNROLL states in registers, STATE_ELEMS_PER_THREAD_BWD state elements a thread."""
    if interpret:
        return _interpret_blocks(layout)
    block = _block_d(layout)
    return BlockConfig(block, _num_warps(block, layout, STATE_ELEMS_PER_THREAD_BWD), BWD_UNROLL, CHUNK)


# ----------------------------------------------------------------------------------------
# Inside a kernel
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tile:
    """Where a program sits: batch ``b``, channels ``d0 .. d0 + block_d``, and bounds masks."""

    b: jax.Array
    d0: jax.Array
    block_d: int
    n_state: int
    d_mask: jax.Array | None  # (block_d,) channels inside D, None when every tile is full
    n_mask: jax.Array | None  # (N',) state columns inside N, None when N is a power of two

    @classmethod
    def here(cls, layout: ScanLayout, block_d: int) -> Tile:
        d0 = pl.program_id(1) * block_d
        d_mask = None if layout.dim % block_d == 0 else d0 + jnp.arange(block_d) < layout.dim
        n_mask = None if layout.n_state == layout.d_state else jnp.arange(layout.n_state) < layout.d_state
        return cls(pl.program_id(0), d0, block_d, layout.n_state, d_mask, n_mask)

    @property
    def dn_mask(self) -> jax.Array | None:
        if self.d_mask is None and self.n_mask is None:
            return None
        d = jnp.ones((self.block_d,), jnp.bool_) if self.d_mask is None else self.d_mask
        n = jnp.ones((self.n_state,), jnp.bool_) if self.n_mask is None else self.n_mask
        return d[:, None] & n[None, :]


def load(ref, mask: jax.Array | None) -> jax.Array:
    """Reads a ref view as float32; masked-out elements read 0."""
    value = ref[...] if mask is None else plgpu.load(ref, mask=mask, other=0)
    return value.astype(jnp.float32)


def store(ref, value: jax.Array, mask: jax.Array | None) -> None:
    value = value.astype(ref.dtype)
    if mask is None:
        ref[...] = value
    else:
        plgpu.store(ref, value, mask=mask)


def channel_row(ref, tile: Tile, t) -> jax.Array:
    """(B, L, D) ref -> row (block_d,) at time ``t``."""
    return load(ref.at[tile.b, t, pl.ds(tile.d0, tile.block_d)], tile.d_mask)


def store_channel_row(ref, tile: Tile, t, value: jax.Array) -> None:
    store(ref.at[tile.b, t, pl.ds(tile.d0, tile.block_d)], value, tile.d_mask)


def state_row(ref, tile: Tile, t, n_state: int) -> jax.Array:
    """(B, L, N) ref -> row (N',) at time ``t``."""
    return load(ref.at[tile.b, t, pl.ds(0, n_state)], tile.n_mask)


def channel_vector(ref, tile: Tile) -> jax.Array:
    """(D,) ref -> (block_d,)."""
    return load(ref.at[pl.ds(tile.d0, tile.block_d)], tile.d_mask)


def channel_state_tile(ref, tile: Tile, n_state: int) -> jax.Array:
    """(D, N) ref -> (block_d, N')."""
    return load(ref.at[pl.ds(tile.d0, tile.block_d), pl.ds(0, n_state)], tile.dn_mask)


def softplus(x: jax.Array) -> jax.Array:
    """log(1 + e^x), and x itself above 20, as mamba_ssm's kernel computes it."""
    return jnp.where(x <= 20.0, jnp.log1p(jnp.exp(jnp.minimum(x, 20.0))), x)


def softplus_grad(x: jax.Array) -> jax.Array:
    return jnp.where(x <= 20.0, jax.nn.sigmoid(x), 1.0)


def time_index(layout: ScanLayout, k: int, s):
    """Physical time of logical step ``s`` in direction ``k`` (direction 1 walks backward)."""
    return jnp.int32(s) if k == 0 else jnp.int32(layout.length - 1) - s


def walk(start, size: int, unroll: int, carry, load_rows, compute):
    """Walks logical steps ``start .. start + size`` forward, ``unroll`` at a time.

    ``load_rows(s)`` issues the loads of step ``s``; all loads of a group are issued before
    any of its steps is computed, so their latencies overlap. ``compute(s, rows, carry)``
    returns the new carry. ``size`` is static; a last group may be shorter.
    """

    def group(first, n, carry):
        rows = [load_rows(first + i) for i in range(n)]
        for i in range(n):
            carry = compute(first + i, rows[i], carry)
        return carry

    n_full, rest = divmod(size, unroll)
    if n_full:
        carry = jax.lax.fori_loop(0, n_full, lambda g, c: group(start + g * unroll, unroll, c), carry)
    if rest:
        carry = group(start + n_full * unroll, rest, carry)
    return carry
