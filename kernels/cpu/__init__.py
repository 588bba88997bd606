"""The C++ selective-scan kernel for XLA's CPU backend."""
