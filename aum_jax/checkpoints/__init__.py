"""Model directories, the PyTorch import, pretrained sources."""
