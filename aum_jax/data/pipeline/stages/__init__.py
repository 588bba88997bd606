"""The per-clip stages of the input pipeline, one module each; :mod:`aum_jax.data.pipeline.clip_stages` registers and composes them."""
