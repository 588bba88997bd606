"""Tests of aum_jax.ops: the scan implementations."""
