"""Alembic migrations of the service's schema (`wz serve` and `wz worker` upgrade to head at start)."""
