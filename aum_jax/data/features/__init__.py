"""Decoding, resampling, the Kaldi fbank and the one feature definition."""
