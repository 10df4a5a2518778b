"""Chain of custody: the append-only ledger, Merkle proofs, signed checkpoints."""
