"""The training loop, its jitted step, objectives, divergence, checkpoints, workdir and --mode=eval."""
