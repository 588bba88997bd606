"""Tests of aum_jax.training: the loop, resumption, crash safety, data parallelism."""
