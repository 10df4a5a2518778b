"""viewer/static/digest.js (SHA-256 and SM3 of a file, computed in the browser) in the system Chromium, checked
against hashlib and `cryptography`: known answers, every padding boundary on both paths of digestBlob (Web Crypto
and streaming), the incremental classes fed in uneven pieces, a 64 MiB blob (its speed is printed; see -s), and
the progress callback."""

from __future__ import annotations

import base64
import hashlib
import http.server
import threading
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from playwright.sync_api import Browser, Page

from viewer import STATIC_DIR

pytestmark = pytest.mark.integration

LENGTHS = (0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 1000, 100_003)
CHUNK = 4099  # odd, so block boundaries fall inside chunks
BIG = 64 * 1024 * 1024

# Runs before every evaluate below: the module, base64 decoding, and counters that show which path digestBlob took
# (Web Crypto's digest, or Blob.slice per chunk).
PRELUDE = """
  const m = await import("/digest.js");
  const decode = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const calls = window.calls;
  calls.digest = 0;
  calls.slice = 0;
"""

SPIES = """() => {
  window.calls = { digest: 0, slice: 0 };
  const subtle = crypto.subtle;
  const digest = subtle.digest.bind(subtle);
  subtle.digest = (...args) => {
    window.calls.digest++;
    return digest(...args);
  };
  const slice = Blob.prototype.slice;
  Blob.prototype.slice = function (...args) {
    window.calls.slice++;
    return slice.apply(this, args);
  };
}"""


def _script(body: str, *parameters: str) -> str:
    return f"async ([{', '.join(parameters)}]) => {{{PRELUDE}{body}}}"


def _sm3(data: bytes) -> str:
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return digest.finalize().hex()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bytes(length: int, seed: bytes = b"wangzheng digest.js") -> bytes:
    return hashlib.shake_256(seed).digest(length) if length else b""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """The viewer's static files, and a blank page at / to import them from (modules need http, not file://)."""

    def do_GET(self) -> None:
        if self.path == "/favicon.ico":  # asked for by every page; a 404 would show as a console error
            self.send_response(204)
            self.end_headers()
            return
        if self.path == "/":
            body = b"<!doctype html><meta charset=utf-8><title>digest.js</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args: Any) -> None:
        pass  # quiet: pytest output is for failures


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(STATIC_DIR)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def page(browser: Browser, base: str) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(base + "/")
    # 127.0.0.1 is a secure context, so Web Crypto is there and the fast path is the one tested.
    assert page.evaluate("() => window.isSecureContext && Boolean(crypto.subtle)")
    page.evaluate(SPIES)
    yield page
    context.close()
    assert not problems, problems


def test_known_answers(page: Page) -> None:
    got = page.evaluate(_script("""
      const text = (s) => new TextEncoder().encode(s);
      const sm3 = (s) => new m.Sm3().update(text(s)).hex();
      const sha = (s) => new m.Sha256().update(text(s)).hex();
      const twice = new m.Sm3().update(text("abc"));
      let refused = false;
      twice.hex();
      try {
        twice.update(text("d"));
      } catch {
        refused = true;
      }
      return {
        sm3_abc: sm3("abc"), sm3_abcd16: sm3("abcd".repeat(16)), sha_empty: sha(""), sha_abc: sha("abc"),
        blob_abc: await m.digestBlob(new Blob([text("abc")])),
        blob_abc_streamed: await m.digestBlob(new Blob([text("abc")]), { webCryptoLimit: 0 }),
        hex_again: twice.hex(), refused,
      };
    """), [])
    sm3_abc = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    sha_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert got["sm3_abc"] == sm3_abc == _sm3(b"abc")
    assert got["sm3_abcd16"] == "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732" == _sm3(
        b"abcd" * 16)
    assert got["sha_empty"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" == _sha256(b"")
    assert got["sha_abc"] == sha_abc == _sha256(b"abc")
    for key in ("blob_abc", "blob_abc_streamed"):
        assert got[key] == {"sha256": sha_abc, "sm3": sm3_abc, "size": 3}, key
    # hex() is final: asking again gives the same digest, and more input is refused rather than silently lost.
    assert got["hex_again"] == sm3_abc
    assert got["refused"]


@pytest.mark.parametrize("length", LENGTHS)
def test_every_length_on_both_paths(page: Page, length: int) -> None:
    data = _bytes(length)
    got = page.evaluate(_script("""
      const bytes = decode(data);
      const blob = new Blob([bytes]);
      const web = await m.digestBlob(blob);
      const webCalls = { ...calls };
      calls.digest = 0;
      calls.slice = 0;
      const streamed = await m.digestBlob(blob, { webCryptoLimit: 0, chunkBytes: chunk });
      const streamedCalls = { ...calls };
      // Uneven pieces, an empty one among them, so the buffered tail is filled from every offset.
      const sizes = [1, 63, 0, 64, 65, 7, 128, 3, 4099, 55];
      const sm3 = new m.Sm3();
      const sha = new m.Sha256();
      for (let offset = 0, i = 0; offset <= bytes.length; i++) {
        const piece = bytes.subarray(offset, offset + sizes[i % sizes.length]);
        sm3.update(piece);
        sha.update(piece);
        offset += sizes[i % sizes.length];
      }
      return { web, webCalls, streamed, streamedCalls, pieces: { sha256: sha.hex(), sm3: sm3.hex(),
        size: bytes.length } };
    """, "data", "chunk"), [_b64(data), CHUNK])
    expected = {"sha256": _sha256(data), "sm3": _sm3(data), "size": length}
    assert got["web"] == expected
    assert got["streamed"] == expected
    assert got["pieces"] == expected
    assert got["webCalls"] == {"digest": 1, "slice": 0}, "the Web Crypto path read the blob once"
    if length:
        assert got["streamedCalls"] == {"digest": 0, "slice": -(-length // CHUNK)}, "one slice per chunk"
    else:
        # webCryptoLimit 0 still admits an empty blob (size <= limit): nothing to stream.
        assert got["streamedCalls"] == {"digest": 1, "slice": 0}


def test_web_crypto_refusing_falls_back_to_js(page: Page) -> None:
    data = _bytes(1000, b"refused")
    got = page.evaluate(_script("""
      const subtle = crypto.subtle;
      const digest = subtle.digest;
      subtle.digest = () => Promise.reject(new DOMException("refused", "OperationError"));
      try {
        return await m.digestBlob(new Blob([decode(data)]));
      } finally {
        subtle.digest = digest;
      }
    """, "data"), [_b64(data)])
    assert got == {"sha256": _sha256(data), "sm3": _sm3(data), "size": 1000}


@pytest.mark.parametrize("limit", [None, 0], ids=["web-crypto", "streaming"])
def test_progress_increases_to_the_total_and_the_page_gets_turns(page: Page, limit: int | None) -> None:
    length = 100_003
    data = _bytes(length, b"progress")
    got = page.evaluate(_script("""
      const options = { chunkBytes: chunk, onProgress: (done, total) => progress.push([done, total]) };
      if (limit !== null) options.webCryptoLimit = limit;
      const progress = [];
      // A task that re-posts itself: it only runs if digestBlob gives the event loop a turn between chunks.
      const channel = new MessageChannel();
      let turns = 0;
      let running = true;
      channel.port1.onmessage = () => {
        turns++;
        if (running) channel.port2.postMessage(null);
      };
      channel.port2.postMessage(null);
      const result = await m.digestBlob(new Blob([decode(data)]), options);
      running = false;
      const turnsDuring = turns;
      channel.port1.close();
      const empty = [];
      await m.digestBlob(new Blob([]), { ...options, onProgress: (done, total) => empty.push([done, total]) });
      return { result, progress, turns: turnsDuring, empty };
    """, "data", "chunk", "limit"), [_b64(data), CHUNK, limit])
    assert got["result"] == {"sha256": _sha256(data), "sm3": _sm3(data), "size": length}
    done = [d for d, _ in got["progress"]]
    assert {total for _, total in got["progress"]} == {length}
    assert done == sorted(set(done)), "strictly increasing"
    assert done[-1] == length
    assert len(done) == -(-length // CHUNK), "one call per chunk, the last one at the end"
    assert got["turns"] >= len(done) - 1, got["turns"]
    assert got["empty"] == [[0, 0]]


def test_64_mib_streamed_and_speed(page: Page) -> None:
    pattern = _bytes(1021, b"pattern")  # a prime length: the pattern drifts against the 64-byte blocks
    data = (pattern * (BIG // len(pattern) + 1))[:BIG]
    got = page.evaluate(_script("""
      const pattern = decode(patternText);
      const bytes = new Uint8Array(size);
      for (let offset = 0; offset < size; offset += pattern.length) {
        bytes.set(pattern.subarray(0, Math.min(pattern.length, size - offset)), offset);
      }
      const blob = new Blob([bytes]);
      const seconds = async (work) => {
        const start = performance.now();
        const result = await work();
        return [result, (performance.now() - start) / 1000];
      };
      const progress = [];
      const [streamed, streamSeconds] = await seconds(() => m.digestBlob(blob, { webCryptoLimit: 0,
        onProgress: (done) => progress.push(done) }));
      const [sm3, sm3Seconds] = await seconds(() => new m.Sm3().update(bytes).hex());
      const [sha, shaSeconds] = await seconds(() => new m.Sha256().update(bytes).hex());
      const [web, webSeconds] = await seconds(async () => new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)));
      const [whole, wholeSeconds] = await seconds(() => m.digestBlob(blob));
      const webHex = Array.from(web, (b) => b.toString(16).padStart(2, "0")).join("");
      return { streamed, progress, sm3, sha, webHex, whole,
        seconds: { streamed: streamSeconds, sm3: sm3Seconds, sha256: shaSeconds, webCrypto: webSeconds,
          whole: wholeSeconds } };
    """, "patternText", "size"), [_b64(pattern), BIG])
    expected = {"sha256": _sha256(data), "sm3": _sm3(data), "size": BIG}
    assert got["streamed"] == expected
    assert got["whole"] == expected
    assert got["sm3"] == expected["sm3"]
    assert got["sha"] == got["webHex"] == expected["sha256"]
    assert got["progress"] == [min(n * 8 * 1024 * 1024, BIG) for n in range(1, 9)]
    megabytes = BIG / 1e6
    speeds = ", ".join(f"{name} {megabytes / max(s, 1e-6):.0f} MB/s" for name, s in got["seconds"].items())
    print(f"\ndigest.js over 64 MiB in Chromium: {speeds} "
          "(streamed = JS SHA-256 + SM3 from 8 MiB slices; whole = Web Crypto SHA-256 + JS SM3)")


def test_past_512_mib_the_length_needs_its_high_word(page: Page) -> None:
    # The padding ends in a 64-bit bit count; from 2^29 bytes on, its high 32-bit word is no longer zero, as it is
    # for a multi-GB recording. One 1 MiB piece fed again and again keeps memory small on both sides.
    piece = _bytes(1 << 20, b"long")
    tail = _bytes(1021, b"tail")
    repeats = 512
    got = page.evaluate(_script("""
      const bytes = decode(pieceText);
      const sha = new m.Sha256();
      for (let i = 0; i < repeats; i++) sha.update(bytes);
      return sha.update(decode(tailText)).hex();
    """, "pieceText", "tailText", "repeats"), [_b64(piece), _b64(tail), repeats])
    expected = hashlib.sha256()
    for _ in range(repeats):
        expected.update(piece)
    expected.update(tail)
    assert got == expected.hexdigest()
