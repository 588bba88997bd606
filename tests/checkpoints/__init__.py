"""Tests of aum_jax.checkpoints: model directories and the PyTorch import."""
