"""Predictions, embeddings, export and plots from a model directory."""
