"""What every layer uses: atomic file replacement and the JSON reader (storage), the device mesh
(sharding), the console's logs (logs), the UserError base class (errors)."""
