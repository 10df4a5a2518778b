"""The `wz` command line."""
