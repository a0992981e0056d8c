"""Optional integrations with third-party tools (each imports its tool lazily)."""
