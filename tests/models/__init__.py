"""Tests of aum_jax.models: shapes, fidelity to the original, precision."""
