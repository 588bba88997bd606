"""Tests of aum_jax.inference and the HEAR API: predict, embeddings, export."""
