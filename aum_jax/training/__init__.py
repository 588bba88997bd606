"""The training loop, its jitted step, objectives, divergence, checkpoints and workdir."""
