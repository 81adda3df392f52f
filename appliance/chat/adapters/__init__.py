"""One module per chat platform: its config model and its code (DESIGN §7)."""
