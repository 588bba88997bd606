"""The pure-JAX selective scans: ``"sequential"``, ``"associative"`` and ``"chunked"``.

Each maps float32 ``u``, ``delta`` (B, L, D), ``A`` (D, N), ``B``, ``C`` (B, L, N), from a
zero initial state (``h0`` (B, D, N) for the parallel ones), to the readout ``<h_t, C_t>``
(B, L, D): the recurrence alone, with bias, softplus, skip and gate left to
:mod:`aum_jax.ops.scan`, which registers and dispatches them.

- :func:`scan_sequential`: a ``lax.scan`` over time, the readable reference, with a
  hand-written backward ``lax.scan`` (a ``jax.custom_vjp``) that keeps every state.
- :func:`scan_associative`: ``jax.lax.associative_scan`` over time, log-depth parallel.
- :func:`scan_chunked`: a ``lax.scan`` over chunks of ``chunk_size`` steps with a parallel
  scan inside each chunk; the chunk body is rematerialised, so neither pass ever holds the
  whole (B, L, D, N) state tensor, only chunk-boundary states.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST  # the readout at float32, as the original kernel's arithmetic


def _discretize(
    u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Returns the per-step decay exp(delta*A) and input delta*B*u, both (B, L, D, N) float32."""
    decay = jnp.exp(delta[..., None] * A)
    drive = (delta * u)[..., None] * B[:, :, None, :]
    return decay, drive


def _combine(
    left: tuple[jax.Array, jax.Array], right: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """Composes two affine maps h -> a*h + b, applying ``left`` first."""
    a_l, b_l = left
    a_r, b_r = right
    return a_r * a_l, a_r * b_l + b_r


def _time_major(x: jax.Array) -> jax.Array:
    """(B, L, ...) <-> (L, B, ...)."""
    return jnp.swapaxes(x, 0, 1)


def _forward_states(dt, dtu, B, C, At, keep_states: bool, h0: jax.Array | None = None):
    """The recurrence over time-major inputs, with the state laid out (B, N, D).

    dt, dtu = delta * u: (L, B, D); B, C: (L, B, N); At = A.T: (N, D). Returns the readout
    (L, B, D), with ``keep_states`` the states before each step, h_{t-1} (L, B, N, D), and
    the last one, h_{L-1} (B, N, D). The state starts from ``h0`` (B, N, D), zeros by default. The channel axis D is minor so that the decay, the
    input and the readout are all vectorised along it, and the readout is a batched mat-vec
    (a dot, which XLA's CPU backend runs far faster than a reduce over a middle axis).
    """

    def step(h_prev, inputs):
        dt_t, dtu_t, B_t, C_t = inputs
        h = jnp.exp(dt_t[:, None, :] * At) * h_prev + dtu_t[:, None, :] * B_t[:, :, None]
        y = jnp.einsum("bnd,bn->bd", h, C_t, precision=HIGHEST)
        return h, ((y, h_prev) if keep_states else y)

    if h0 is None:
        h0 = jnp.zeros((dt.shape[1], At.shape[0], At.shape[1]), jnp.float32)
    h_last, out = jax.lax.scan(step, h0, (dt, dtu, B, C))
    return (*out, h_last) if keep_states else (out, h_last)


@jax.custom_vjp
def scan_sequential(u, delta, A, B, C):
    """(B, L, D) inputs, zero initial state -> (B, L, D) readout <h_t, C_t>, with a ``lax.scan``
    over time; A is (D, N), B and C are (B, L, N).

    Its gradient is a hand-written reverse ``lax.scan`` (``_sequential_bwd``): JAX's own
    transpose of the forward scan takes about 10x the forward's time on CPU.
    """
    dt, dtu, B, C = (_time_major(x) for x in (delta, delta * u, B, C))
    return _time_major(_forward_states(dt, dtu, B, C, A.T, keep_states=False)[0])


def _sequential_fwd(u, delta, A, B, C):
    """The forward pass, keeping every state h_{t-1} (L, B, N, D) and h_{L-1} for the backward one."""
    dt, dtu, B_t, C_t = (_time_major(x) for x in (delta, delta * u, B, C))
    y, states, h_last = _forward_states(dt, dtu, B_t, C_t, A.T, keep_states=True)
    return _time_major(y), (u, delta, A, B, C, states, h_last)


def _sequential_bwd(residuals, dy):
    """Walks time backwards with g_t = dLoss/dh_t (B, N, D), reading the stored states.

    With decay_t = exp(delta_t A), h_t = decay_t h_{t-1} + delta_t u_t B_t, y_t = <h_t, C_t>:

        g_t = dy_t C_t + decay_{t+1} g_{t+1}
        dC_t = sum_d h_t dy_t              dB_t = sum_d g_t delta_t u_t
        d(delta_t u_t) = sum_n g_t B_t     w_t = decay_t g_t h_{t-1}
        d delta_t = sum_n w_t A + u_t d(delta_t u_t)       du_t = delta_t d(delta_t u_t)
        dA = sum_{b, t} w_t delta_t

    The step reads h_{t-1} and carries it on as the next step's h_t. The sums over D are
    batched mat-vecs (dots); the sum over N is written out as N multiply-adds, which XLA
    fuses with w's producer; dA accumulates in a (B, N, D) carry and is summed over the
    batch once after the loop: a reduce over a non-minor axis in every step cost as much
    as the rest of the step on CPU.
    """
    u, delta, A, B, C, states, h_last = residuals
    At = A.T  # (N, D)

    def step(carry, inputs):
        g, dA, h = carry
        dt_t, u_t, dy_t, B_t, C_t, h_prev = inputs
        g = g + dy_t[:, None, :] * C_t[:, :, None]
        dC = jnp.einsum("bnd,bd->bn", h, dy_t, precision=HIGHEST)
        dB = jnp.einsum("bnd,bd->bn", g, dt_t * u_t, precision=HIGHEST)
        ddtu = jnp.einsum("bnd,bn->bd", g, B_t, precision=HIGHEST)
        g = jnp.exp(dt_t[:, None, :] * At) * g  # decay_t g_t, the next step's carry
        w = g * h_prev
        ddt = ddtu * u_t
        for n in range(At.shape[0]):
            ddt = ddt + w[:, n, :] * At[n]
        dA = dA + w * dt_t[:, None, :]
        return (g, dA, h_prev), (ddtu * dt_t, ddt, dB, dC)

    zeros = jnp.zeros_like(h_last)
    inputs = [_time_major(x) for x in (delta, u, dy, B, C)] + [states]
    (_, dA, _), grads = jax.lax.scan(step, (zeros, zeros, h_last), inputs, reverse=True)
    du, ddelta, dB, dC = (_time_major(x) for x in grads)
    return du, ddelta, jnp.sum(dA, axis=0).T, dB, dC


scan_sequential.defvjp(_sequential_fwd, _sequential_bwd)


def scan_from_state(u, delta, A, B, C, h0):
    """The recurrence from state ``h0`` (B, D, N): (B, L, D) inputs -> the readout (B, L, D) and the
    last state (B, D, N), forward in time; for inference on a sequence read in pieces, each piece
    starting from the state the previous one ended in (no gradient of its own is defined)."""
    dt, dtu, B_t, C_t = (_time_major(x) for x in (delta, delta * u, B, C))
    y, h_last = _forward_states(dt, dtu, B_t, C_t, A.T, keep_states=False, h0=jnp.swapaxes(h0, 1, 2))
    return _time_major(y), jnp.swapaxes(h_last, 1, 2)


def _scan_parallel(u, delta, A, B, C, h0):
    """Like ``scan_sequential`` with an associative scan; also returns the last state (B, D, N)."""
    decay, drive = _discretize(u, delta, A, B)
    drive = drive.at[:, 0].add(decay[:, 0] * h0)
    _, h = jax.lax.associative_scan(_combine, (decay, drive), axis=1)
    return jnp.einsum("bldn,bln->bld", h, C, precision=HIGHEST), h[:, -1]


def scan_associative(u, delta, A, B, C, h0):
    return _scan_parallel(u, delta, A, B, C, h0)[0]


def scan_chunked(u, delta, A, B, C, h0, chunk_size: int):
    """Scans chunks of ``chunk_size`` steps in turn; only boundary states are kept."""
    batch, length, dim = u.shape
    chunk = min(chunk_size, length)
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:
        # delta = 0 makes a step the identity map: decay exp(0) = 1 and input 0.
        u, delta, B, C = (jnp.pad(x, ((0, 0), (0, pad), (0, 0))) for x in (u, delta, B, C))

    def to_chunks(x):
        return jnp.swapaxes(x.reshape(batch, n_chunks, chunk, x.shape[-1]), 0, 1)

    @jax.checkpoint
    def body(h, inputs):
        y, h_last = _scan_parallel(*inputs[:2], A, *inputs[2:], h)
        return h_last, y

    _, y = jax.lax.scan(body, h0, [to_chunks(x) for x in (u, delta, B, C)])
    y = jnp.swapaxes(y, 0, 1).reshape(batch, n_chunks * chunk, dim)
    return y[:, :length]
