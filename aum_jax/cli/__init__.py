"""What the command lines share: flags and the console."""
