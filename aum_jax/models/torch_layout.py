"""How a parameter's axes differ between the original PyTorch modules and their NNX counterparts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Layout:
    """``to_nnx`` and its inverse ``to_torch``, for one tensor."""

    to_nnx: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


SAME = Layout(lambda v: v, lambda v: v)
LINEAR = Layout(lambda v: v.T, lambda v: v.T)  # (out, in) <-> (in, out).
CONV1D = Layout(lambda v: v[:, 0, :].T, lambda v: v.T[:, None, :])  # depthwise (C, 1, W) <-> (W, C).
PATCH = Layout(lambda v: v.transpose(2, 3, 1, 0), lambda v: v.transpose(3, 2, 0, 1))  # (D, C, h, w) <-> (h, w, C, D).
