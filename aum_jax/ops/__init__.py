"""Numerical operators of AuM."""

from aum_jax.ops.scan import (
    IMPLEMENTATIONS,
    SCAN_IMPLS,
    SCAN_READOUT,
    bidirectional_scan,
    conv_silu,
    fused_scan,
    has_fused_inference,
    resolve_impl,
    selective_scan,
    selective_scan_from_state,
)

__all__ = ["IMPLEMENTATIONS", "SCAN_IMPLS", "SCAN_READOUT", "bidirectional_scan", "conv_silu", "fused_scan",
           "has_fused_inference", "resolve_impl", "selective_scan", "selective_scan_from_state"]
