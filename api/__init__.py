"""The custody service (FastAPI): cases, captures on workers, verified evidence, custody proofs, hash checks."""
