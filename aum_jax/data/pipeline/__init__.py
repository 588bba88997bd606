"""Sampling, per-clip stages and augmentations, batching: grain datasets."""
