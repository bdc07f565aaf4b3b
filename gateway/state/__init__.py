"""State shared by workers and replicas (optional: Redis, or protocol-compatible servers)."""
