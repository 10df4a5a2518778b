"""Preservation: object-locked S3 storage, the embedded SeaweedFS, the local spool."""
