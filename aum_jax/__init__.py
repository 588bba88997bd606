"""aum-jax: Audio-Mamba (AuM) in JAX and Flax NNX."""

__version__ = "0.1.0"
