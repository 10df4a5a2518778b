"""One real SeaweedFS for the storage tests, on ports no default instance uses. No weed: the tests fail."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from evidence import Digests
from hashing import digest_file
from storage import EmbeddedSeaweed, S3Endpoint, S3ObjectStore

S3_PORT = 18333
# master 18400 ... admin 18407, admin gRPC 28407: far from SeaweedFS's defaults (8333, 9333, 8888, ...) and below
# the kernel's ephemeral range (32768-60999), where weed's own outgoing connections could take a port.
PORT_BASE = 18400


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedSeaweed]:
    instance = EmbeddedSeaweed(tmp_path_factory.mktemp("seaweed"), s3_port=S3_PORT, port_base=PORT_BASE)
    instance.ensure_running(timeout=60)
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def endpoint(seaweed: EmbeddedSeaweed) -> S3Endpoint:
    return seaweed.ensure_running()


@pytest.fixture
def bucket_name() -> str:
    return f"wz-test-{uuid.uuid4().hex[:12]}"


def make_store(endpoint: S3Endpoint, bucket: str, **options: Any) -> S3ObjectStore:
    return S3ObjectStore(
        endpoint.endpoint, endpoint.access_key, endpoint.secret_key, bucket=bucket, secure=endpoint.secure,
        **{"retention_days": 1, **options},
    )


@pytest.fixture
def store(endpoint: S3Endpoint, bucket_name: str) -> Iterator[S3ObjectStore]:
    created = make_store(endpoint, bucket_name)
    created.ensure_bucket()
    yield created
    created.close()


@pytest.fixture
def raw(endpoint: S3Endpoint) -> Any:
    """A plain minio client, to try what our store never does (deletes, shortening retention)."""
    return Minio(endpoint.endpoint, access_key=endpoint.access_key, secret_key=endpoint.secret_key,
                 secure=False, region="us-east-1")


def write_file(path: Path, data: bytes) -> tuple[Path, Digests]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, digest_file(path)[1]


def closed_port() -> int:
    """A port nothing listens on: the kernel's pick, released at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def versions(client: Any, bucket: str, key: str) -> list[Any]:
    return [o for o in client.list_objects(bucket, prefix=key, include_version=True) if o.object_name == key]


def random_bytes(size: int) -> bytes:
    return os.urandom(size)
