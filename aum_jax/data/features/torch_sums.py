"""float32 sums and means in the order torch's CPU kernel adds them.

Hand-written rather than ``np.sum`` (pairwise) or ``math.fsum``: bit-exact fidelity to
torch's reduction order, which the Kaldi fbank's per-frame mean removal needs
(:mod:`aum_jax.data.features.kaldi`).
"""

from __future__ import annotations

import numpy as np


def _ceil_log2(n: int) -> int:
    return 0 if n <= 1 else int(n - 1).bit_length()


def _seq_sum(vals: np.ndarray) -> np.ndarray:
    """Left-to-right float32 sum along axis 0 (starting from 0)."""
    acc = np.zeros(vals.shape[1:], np.float32)
    for v in vals:
        acc += v
    return acc


def _blocked_seq_sum(vals: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits axis 0 into full blocks of ``step`` and sums each block left to right.

    Returns (block_sums (nblocks, ...), sum of the leftover items).
    """
    nb = vals.shape[0] // step
    blocks = vals[: nb * step].reshape((nb, step) + vals.shape[1:])
    sums = np.zeros((nb,) + vals.shape[1:], np.float32)
    for j in range(step):
        sums += blocks[:, j]
    return sums, _seq_sum(vals[nb * step :])


def _cascade_sum(vals: np.ndarray) -> np.ndarray:
    """float32 sum along axis 0 in the order of ATen's multi-level cascade.

    PyTorch's CPU sum kernel sums runs of ``2**p`` items (p >= 4) left to right, then
    sums those partial results in runs of ``2**p`` again, over four levels; items that
    do not fill a run are summed separately and the levels are added back at the end,
    lowest first. Reproducing that order gives bit-identical float32 sums.
    """
    size = vals.shape[0]
    power = max(4, _ceil_log2(size) // 4)
    step = 1 << power
    level1, total = _blocked_seq_sum(vals, step)  # total: the tail below one run.
    level2, rest1 = _blocked_seq_sum(level1, step)
    level3, rest2 = _blocked_seq_sum(level2, step)
    rest3 = _seq_sum(level3)
    total = total + rest1
    total += rest2
    total += rest3
    return total


def torch_sum_f32(x: np.ndarray) -> np.ndarray:
    """float32 sum over the last (contiguous) axis, bit-identical to ``torch.sum(x, -1)``.

    PyTorch (CPU, any SIMD level seen: default/AVX2/AVX512) sums a contiguous row as
    vectors of 8 floats, kept in 4 interleaved accumulators that go through the cascade
    above; the leftover vectors, the other accumulators, the leftover scalars and the 8
    lanes are then added in a fixed order. Matching that order matters here: torchaudio
    removes each frame's mean in float32, and low-energy mel bins are sensitive to the
    last bit of it.

    Args:
      x: float32 array (..., L).

    Returns:
      float32 array (...,).
    """
    lanes, ilp = 8, 4
    x = np.asarray(x, np.float32)
    lead = x.shape[:-1]
    length = x.shape[-1]
    x2 = x.reshape(-1, length)
    n_vec = length // lanes
    n_ilp = n_vec // ilp
    vecs = x2[:, : n_vec * lanes].reshape(x2.shape[0], n_vec, lanes)
    groups = vecs[:, : n_ilp * ilp].reshape(x2.shape[0], n_ilp, ilp, lanes)
    part = _cascade_sum(np.moveaxis(groups, 1, 0))  # (rows, ilp, lanes)
    acc = part[:, 0].copy()
    for v in range(n_ilp * ilp, n_vec):
        acc += vecs[:, v]
    for k in range(1, ilp):
        acc += part[:, k]
    out = np.zeros(x2.shape[0], np.float32)
    for k in range(n_vec * lanes, length):
        out += x2[:, k]
    for k in range(lanes):
        out += acc[:, k]
    return out.reshape(lead)


def torch_mean_f32(x: np.ndarray) -> np.ndarray:
    """float32 mean over the last axis as torch computes it (sum, then divide)."""
    return torch_sum_f32(x) / np.float32(x.shape[-1])
