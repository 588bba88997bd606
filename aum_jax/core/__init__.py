"""What every layer uses: files replaced atomically, JSON, the device mesh, the console."""
