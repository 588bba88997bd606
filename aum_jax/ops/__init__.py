"""Numerical operators of AuM."""

from aum_jax.ops.scan import SCAN_IMPLS, SCAN_READOUT, bidirectional_scan, resolve_impl, selective_scan

__all__ = ["SCAN_IMPLS", "SCAN_READOUT", "bidirectional_scan", "resolve_impl", "selective_scan"]
