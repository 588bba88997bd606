"""Audio in, batches out: sources, features, the grain pipeline, the demo dataset."""
