"""Integrity: streaming digests (SHA-256 and SM3 in one pass)."""

from hashing.digest import DigestWriter, digest_file, digest_stream, sm3_available

__all__ = ["DigestWriter", "digest_file", "digest_stream", "sm3_available"]
