"""Numerical operators of AuM."""

from aum_jax.ops.scan import SCAN_IMPLS, selective_scan

__all__ = ["SCAN_IMPLS", "selective_scan"]
