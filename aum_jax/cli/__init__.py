"""What the command lines share: flag parsing (flags) and the one place where a user mistake becomes
an ``error:`` line (command)."""
