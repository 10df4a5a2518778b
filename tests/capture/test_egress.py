"""The capture's egress proxy, spoken to as Chromium and ffmpeg speak to it (raw HTTP/1.1 over loopback)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from capture.egress import EgressProxy
from capture.targets import TargetPolicy
from tests.capture.netfixtures import RecordingServer, html

ONLY_TWO = TargetPolicy.from_settings("127.0.0.2/32", allow_private=False)


async def _exchange(port: int, request: bytes, *, read_all: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1) if read_all else reader.read(65536), 10)
    writer.close()
    return data


def _proxy(policy: TargetPolicy, answers: dict[str, list[list[str]]] | None = None,
           refused: list[tuple[int, str, str]] | None = None) -> tuple[EgressProxy, list[str]]:
    """A proxy whose resolver answers from `answers` (each lookup takes the next answer) and logs every lookup."""
    lookups: list[str] = []

    def resolve(host: str) -> Sequence[str]:
        lookups.append(host)
        queue = (answers or {}).get(host)
        if not queue:
            raise OSError(f"{host}: Name or service not known")
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def note(tile: int, what: str, why: str) -> None:
        if refused is not None:
            refused.append((tile, what, why))

    return EgressProxy(policy, resolver=resolve, on_refused=note), lookups


def test_a_plain_request_goes_to_the_checked_address_one_per_connection() -> None:
    async def run() -> None:
        with RecordingServer("127.0.0.2", {"/page": html("<p>ok</p>")}) as shop:
            proxy, _ = _proxy(ONLY_TWO, {"shop.test": [["127.0.0.2"]]})
            port = await proxy.listen(1)
            request = (f"GET http://shop.test:{shop.port}/page?x=1 HTTP/1.1\r\nHost: shop.test:{shop.port}\r\n"
                       "Proxy-Connection: keep-alive\r\nUser-Agent: test\r\n\r\n").encode()
            answer = await _exchange(port, request)
            await proxy.close()
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"<p>ok</p>")
            [seen] = shop.seen
            assert seen.path == "/page?x=1"  # origin form, not the proxy's absolute form
            assert seen.headers["host"] == f"shop.test:{shop.port}"
            assert seen.headers["connection"] == "close" and "proxy-connection" not in seen.headers
            assert proxy.pinned() == {"shop.test": ["127.0.0.2"]}

    asyncio.run(run())


def test_a_second_request_on_a_kept_alive_connection_never_reaches_the_first_host() -> None:
    """Chromium reuses proxy connections across hosts: the proxy must not pipe request two to host one."""
    async def run() -> None:
        with RecordingServer("127.0.0.2", {"/a": html("a")}) as shop:
            proxy, _ = _proxy(TargetPolicy(allow_private=True), {"shop.test": [["127.0.0.2"]]})
            port = await proxy.listen(1)
            two = (f"GET http://shop.test:{shop.port}/a HTTP/1.1\r\nHost: shop.test\r\n\r\n"
                   f"GET http://127.0.0.1:1/admin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").encode()
            await _exchange(port, two)
            await proxy.close()
            assert shop.paths() == ["/a"]

    asyncio.run(run())


def test_a_refused_address_gets_403_and_goes_on_the_timeline() -> None:
    async def run() -> None:
        with RecordingServer("127.0.0.1", {"/secret": html("secret")}) as local:
            refused: list[tuple[int, str, str]] = []
            proxy, _ = _proxy(ONLY_TWO, refused=refused)
            port = await proxy.listen(3)
            answer = await _exchange(port, f"GET {local.origin}/secret HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            tunnel = await _exchange(port, f"CONNECT 127.0.0.1:{local.port} HTTP/1.1\r\n\r\n".encode())
            await proxy.close()
            assert answer.startswith(b"HTTP/1.1 403") and b"127.0.0.1 is a loopback address" in answer
            assert tunnel.startswith(b"HTTP/1.1 403")
            assert local.seen == []
            assert [(t, why) for t, _what, why in refused] == [(3, "127.0.0.1 is a loopback address")] * 2
            assert proxy.refusal_for(3, "127.0.0.1") == "127.0.0.1 is a loopback address"

    asyncio.run(run())


def test_a_name_is_resolved_once_so_rebinding_cannot_move_it() -> None:
    """The first answer is allowed (127.0.0.2); every later lookup would say 127.0.0.1. The proxy never asks again."""
    async def run() -> None:
        with RecordingServer("127.0.0.2", {"/1": html("one"), "/2": html("two")}) as allowed, \
                RecordingServer("127.0.0.1", {"/1": html("x"), "/2": html("x")}) as local:
            proxy, lookups = _proxy(ONLY_TWO, {"shop.test": [["127.0.0.2"], ["127.0.0.1"]]})
            port = await proxy.listen(1)
            for path in ("/1", "/2"):
                answer = await _exchange(port, f"GET http://shop.test:{allowed.port}{path} HTTP/1.1\r\n"
                                               f"Host: shop.test\r\n\r\n".encode())
                assert answer.startswith(b"HTTP/1.1 200")
            await proxy.close()
            assert lookups == ["shop.test"]
            assert allowed.paths() == ["/1", "/2"] and local.seen == []

    asyncio.run(run())


def test_a_name_with_any_refused_address_is_refused_whole() -> None:
    async def run() -> None:
        with RecordingServer("127.0.0.2", {"/": html("x")}) as shop:
            proxy, _ = _proxy(ONLY_TWO, {"mixed.test": [["127.0.0.2", "127.0.0.1"]]})
            port = await proxy.listen(1)
            answer = await _exchange(port, f"GET http://mixed.test:{shop.port}/ HTTP/1.1\r\n\r\n".encode())
            await proxy.close()
            assert answer.startswith(b"HTTP/1.1 403") and b"mixed.test resolves to 127.0.0.1" in answer
            assert shop.seen == []

    asyncio.run(run())


def test_connect_tunnels_bytes_both_ways_to_the_checked_address() -> None:
    async def run() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write((await reader.readexactly(5)).upper())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.2", 0)
        echo_port = server.sockets[0].getsockname()[1]
        proxy, _ = _proxy(ONLY_TWO, {"tls.test": [["127.0.0.2"]]})
        port = await proxy.listen(1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"CONNECT tls.test:{echo_port} HTTP/1.1\r\nHost: tls.test:{echo_port}\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.read(-1), 10) == b"HELLO"
        writer.close()
        await proxy.close()
        server.close()

    asyncio.run(run())


@pytest.mark.parametrize("request_line", [b"GARBAGE\r\n\r\n", b"GET /relative HTTP/1.1\r\n\r\n",
                                          b"CONNECT nohostport HTTP/1.1\r\n\r\n",
                                          b"GET ftp://x.test/ HTTP/1.1\r\n\r\n"])
def test_malformed_proxy_requests_get_400(request_line: bytes) -> None:
    async def run() -> None:
        proxy, lookups = _proxy(TargetPolicy(allow_private=True))
        port = await proxy.listen(1)
        answer = await _exchange(port, request_line)
        await proxy.close()
        assert answer.startswith(b"HTTP/1.1 400") and lookups == []

    asyncio.run(run())


def test_a_response_goes_back_with_connection_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server would keep the connection alive; the browser is told it ends, and it does."""
    async def run() -> None:
        with RecordingServer("127.0.0.2", {"/a": html("a")}) as shop:
            proxy, _ = _proxy(ONLY_TWO, {"shop.test": [["127.0.0.2"]]})
            port = await proxy.listen(1)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET http://shop.test:{shop.port}/a HTTP/1.1\r\nHost: shop.test\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert b"Connection: close" in head and b"keep-alive" not in head.lower()
            assert await asyncio.wait_for(reader.read(-1), 10) == b"a"  # and the connection ends with the body
            writer.close()
            await proxy.close()

    asyncio.run(run())


def test_abandoned_connections_do_not_pile_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A page that opens connections to a server that never answers and then gives up on them must not exhaust
    the capture's file descriptors: once the browser is gone the server gets a short grace, then both close."""
    from capture import egress

    monkeypatch.setattr(egress, "CLOSE_GRACE", 0.2)

    async def run() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(60)

        server = await asyncio.start_server(silent, "127.0.0.2", 0)
        silent_port = server.sockets[0].getsockname()[1]
        proxy, _ = _proxy(ONLY_TWO, {"slow.test": [["127.0.0.2"]]})
        port = await proxy.listen(1)
        for _ in range(50):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"CONNECT slow.test:{silent_port} HTTP/1.1\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
            writer.close()  # as a fetch() that was aborted
        await asyncio.sleep(1.0)
        assert len(proxy._connections) == 0
        await proxy.close()
        server.close()

    asyncio.run(run())


def test_more_connections_than_a_tile_may_hold_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from capture import egress

    monkeypatch.setattr(egress, "MAX_CONNECTIONS_PER_TILE", 3)

    async def run() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(60)

        server = await asyncio.start_server(silent, "127.0.0.2", 0)
        silent_port = server.sockets[0].getsockname()[1]
        proxy, _ = _proxy(ONLY_TWO, {"slow.test": [["127.0.0.2"]]})
        port = await proxy.listen(1)
        held = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"CONNECT slow.test:{silent_port} HTTP/1.1\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
            held.append(writer)
        assert (await _exchange(port, b"CONNECT slow.test:1 HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 503")
        for writer in held:
            writer.close()
        await proxy.close()
        server.close()

    asyncio.run(run())


def test_a_lookup_that_hangs_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from capture import egress

    monkeypatch.setattr(egress, "RESOLVE_TIMEOUT", 0.3)
    released = threading.Event()

    def hanging(host: str) -> Sequence[str]:
        released.wait(10)
        return ["127.0.0.2"]

    async def run() -> None:
        proxy = EgressProxy(ONLY_TWO, resolver=hanging)
        port = await proxy.listen(1)
        answer = await _exchange(port, b"GET http://tarpit.test/ HTTP/1.1\r\n\r\n")
        released.set()
        await proxy.close()
        assert answer.startswith(b"HTTP/1.1 403") and b"did not resolve within" in answer

    asyncio.run(run())
