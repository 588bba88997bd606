"""Tests of the command lines: the console and one-line refusals."""
