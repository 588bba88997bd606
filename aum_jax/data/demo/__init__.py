"""The embedded demo dataset: spoken keywords synthesised with eSpeak NG."""
