import hashlib
import os
from pathlib import Path
from typing import Any

from hashing import DigestWriter, digest_file

SM3_ABC = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"


def test_sm3_matches_the_gbt_32905_vector(tmp_path: Path) -> None:
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    size, digests = digest_file(path)
    assert size == 3
    assert digests.sm3 == SM3_ABC
    assert digests.sha256 == hashlib.sha256(b"abc").hexdigest()


def test_streaming_digest_spans_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 20_000  # 5 MB: several 1 MiB chunks
    path = tmp_path / "big"
    path.write_bytes(data)
    size, digests = digest_file(path)
    assert size == len(data)
    assert digests.sha256 == hashlib.sha256(data).hexdigest()
    assert digests.sm3 == hashlib.new("sm3", data).hexdigest()


def test_digest_writer_hashes_what_it_writes(tmp_path: Path) -> None:
    path = tmp_path / "out"
    with path.open("wb") as sink:
        writer = DigestWriter(sink)
        writer.write(b"a")
        writer.write(b"bc")
    assert writer.size == 3
    assert writer.digests().sm3 == SM3_ABC
    assert path.read_bytes() == b"abc"


def test_mapped_windows_cover_every_byte(tmp_path: Path) -> None:
    from hashing.digest import WINDOW

    data = (bytes(range(251)) * (WINDOW // 251 + 2))[: 2 * WINDOW + 12345]  # spans three windows, uneven end
    path = tmp_path / "windows"
    path.write_bytes(data)
    size, digests = digest_file(path)
    assert size == len(data)
    assert digests.sha256 == hashlib.sha256(data).hexdigest()
    assert digests.sm3 == hashlib.new("sm3", data).hexdigest()


def test_streams_small_and_large_short_reads_and_all(tmp_path: Path) -> None:
    """Small streams take a path without threads; a stream that hands out short reads is still read whole."""
    import hashlib
    import io

    from hashing import digest_stream

    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data, self.at = data, 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            count = min(len(buffer), 1000, len(self.data) - self.at)
            buffer[:count] = self.data[self.at:self.at + count]
            self.at += count
            return count

    for size in (0, 1, 1 << 20, (1 << 20) + 1, 9 << 20):
        data = os.urandom(size)
        for stream in (io.BytesIO(data), Trickle(data)):
            length, digests = digest_stream(stream)  # type: ignore[arg-type]
            assert length == size and digests.sha256 == hashlib.sha256(data).hexdigest()
            assert digests.sm3 == hashlib.new("sm3", data).hexdigest()
