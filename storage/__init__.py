"""Preservation: object-locked S3 storage, the embedded SeaweedFS, the local spool."""

from storage.s3 import ObjectStore, S3ObjectStore, UnsafeStorageWarning, store_from_settings
from storage.seaweed import EmbeddedSeaweed, S3Endpoint, SeaweedPorts, find_weed
from storage.spool import ProblemKind, Spool, SpoolBatch, SpoolItem, SyncedItem, SyncProblem, SyncReport

__all__ = [
    "EmbeddedSeaweed",
    "ObjectStore",
    "ProblemKind",
    "S3Endpoint",
    "S3ObjectStore",
    "SeaweedPorts",
    "Spool",
    "SpoolBatch",
    "SpoolItem",
    "SyncProblem",
    "SyncReport",
    "SyncedItem",
    "UnsafeStorageWarning",
    "find_weed",
    "store_from_settings",
]
