"""Tests of aum_jax.evaluation: metrics."""
