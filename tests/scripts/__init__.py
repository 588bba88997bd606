"""Tests of scripts/: the GPU check, the kernel report, the notebook."""
