"""Tests of aum_jax.data: sources, features, the pipeline, the demo dataset."""
