"""Tests of kernels/: the CPU kernel's builds."""
