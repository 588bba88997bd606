"""The Pallas (Triton) selective-scan kernels for GPUs."""
