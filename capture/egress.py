"""The capture's only way out: an HTTP proxy on loopback, one listener per tile.

Each tile's Chromium (`--proxy-server`, no loopback bypass, `--host-resolver-rules` that resolve nothing) and
each stream copy of that tile (ffmpeg `-http_proxy`) reach the network only through its listener. For every
request, redirect, subresource, WebSocket and stream fetch the proxy

  * resolves the host once per capture (later requests reuse the answer, so DNS rebinding cannot move a name),
  * checks every address against the capture's `TargetPolicy`, refusing the name if any address is refused,
  * connects to exactly those addresses, and
  * records a refusal on the tile's timeline with its reason (HTTP 403 to the browser).

HTTPS is tunnelled (CONNECT), never opened: TLS runs end to end between the browser and the site, which is
what the certificate capture relies on. Plain HTTP requests are forwarded one per connection: the request goes
with `Connection: close`, only its own body follows it, the response goes back with `Connection: close`, and
the connection ends with the response, so a kept-alive connection to the proxy can never carry a request for
one host to another. A hostile page cannot exhaust the capture: lookups run on a small executor of their own
with a timeout, connections idle for IDLE_TIMEOUT or abandoned by the browser are closed, and connections,
hosts and kept refusals per tile are capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from capture.targets import Resolver, TargetPolicy, system_resolver

HEAD_LIMIT = 64 * 1024
CHUNK = 64 * 1024
HEAD_TIMEOUT = 30.0
CONNECT_TIMEOUT = 15.0
RESOLVE_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0  # no byte either way for this long ends a connection (a live stream sends far more often)
CLOSE_GRACE = 5.0  # after the client is gone, the server has this long to finish before both are closed
MAX_CONNECTIONS_PER_TILE = 256
MAX_HOSTS_PER_TILE = 2000
MAX_REFUSALS_KEPT = 1000
MAX_TARGET_TEXT = 300
_HOP_BY_HOP = {"proxy-connection", "proxy-authorization", "proxy-authenticate", "keep-alive", "connection", "te",
               "trailer"}

Refused = Callable[[int, str, str], None]  # tile, what was asked for, why it was refused


class EgressRefused(Exception):
    """A request the capture's network rule does not allow; the message is the reason."""


@dataclass
class _Pinned:
    addresses: tuple[str, ...] = ()
    refusal: str | None = None
    resolved_at: float = field(default_factory=time.time)


class EgressProxy:
    """The loopback proxy every tile's browser and stream copies go through."""

    def __init__(self, policy: TargetPolicy, *, resolver: Resolver = system_resolver,
                 on_refused: Refused | None = None) -> None:
        self.policy = policy
        self._resolver = resolver
        self._on_refused = on_refused
        self._pinned: dict[str, _Pinned] = {}
        self._pending: dict[str, asyncio.Future[_Pinned]] = {}
        self._servers: dict[int, asyncio.Server] = {}
        self._connections: set[asyncio.Task[None]] = set()
        self._per_tile: dict[int, int] = {}
        self._hosts_per_tile: dict[int, set[str]] = {}
        # Lookups wait on DNS, which a page controls: their own threads, so they never hold up the capture's.
        self._lookups = ThreadPoolExecutor(max_workers=4, thread_name_prefix="egress-dns")
        self.refusals: list[dict[str, object]] = []
        self.refusals_dropped = 0
        self.unreachable: dict[tuple[int, str], str] = {}  # (tile, host) -> why no connection could be made

    # -- listeners --

    async def listen(self, tile: int) -> int:
        """Open the tile's listener on loopback; returns its port."""
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            if self._per_tile.get(tile, 0) >= MAX_CONNECTIONS_PER_TILE:
                with contextlib.suppress(Exception):  # read the request, so the answer is not lost to a reset
                    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                await _reply(writer, 503, f"more than {MAX_CONNECTIONS_PER_TILE} connections open for this tile")
                writer.close()
                return
            self._connections.add(task)
            self._per_tile[tile] = self._per_tile.get(tile, 0) + 1
            try:
                await self._serve(tile, reader, writer)
            finally:
                self._connections.discard(task)
                self._per_tile[tile] -= 1

        server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=HEAD_LIMIT)
        self._servers[tile] = server
        return int(server.sockets[0].getsockname()[1])

    def port(self, tile: int) -> int:
        return int(self._servers[tile].sockets[0].getsockname()[1])

    def url(self, tile: int) -> str:
        return f"http://127.0.0.1:{self.port(tile)}"

    async def close(self) -> None:
        for server in self._servers.values():
            server.close()
        for task in list(self._connections):
            task.cancel()
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        self._servers.clear()
        self._lookups.shutdown(wait=False, cancel_futures=True)

    # -- the rule --

    def pinned(self) -> dict[str, list[str]]:
        """Every host the capture resolved and the addresses it used (for the provenance)."""
        return {host: list(pin.addresses) for host, pin in sorted(self._pinned.items()) if pin.addresses}

    def addresses(self, host: str) -> tuple[str, ...]:
        pin = self._pinned.get(_key(host))
        return pin.addresses if pin is not None else ()

    def pin(self, host: str, addresses: tuple[str, ...]) -> None:
        """Start with what the capture's own check resolved, so the browser uses the addresses that were checked."""
        self._pinned[_key(host)] = _Pinned(addresses=addresses)

    def unreachable_for(self, tile: int, host: str) -> str | None:
        return self.unreachable.get((tile, _key(host)))

    def refusal_for(self, tile: int, host: str) -> str | None:
        for refusal in self.refusals:
            if refusal["tile"] == tile and refusal["host"] == _key(host):
                return str(refusal["reason"])
        return None

    async def _resolve(self, host: str) -> _Pinned:
        host = _key(host)
        if host in self._pinned:
            return self._pinned[host]
        if host in self._pending:
            return await self._pending[host]
        future: asyncio.Future[_Pinned] = asyncio.get_running_loop().create_future()
        self._pending[host] = future
        try:
            pin = await self._decide(host)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            self._pending.pop(host, None)
        self._pinned[host] = pin
        future.set_result(pin)
        return pin

    async def _decide(self, host: str) -> _Pinned:
        refusal = self.policy.host_refusal(host)
        if refusal:
            return _Pinned(refusal=refusal)
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addresses: tuple[str, ...] = (str(literal),)
        else:
            try:
                lookup = asyncio.get_running_loop().run_in_executor(self._lookups, self._resolver, host)
                addresses = tuple(await asyncio.wait_for(lookup, RESOLVE_TIMEOUT))
            except TimeoutError:
                return _Pinned(refusal=f"{host} did not resolve within {RESOLVE_TIMEOUT:.0f} s")
            except (OSError, UnicodeError, RuntimeError) as exc:
                return _Pinned(refusal=f"{host} does not resolve ({exc})")
            if not addresses:
                return _Pinned(refusal=f"{host} resolves to no address")
        for address in addresses:
            reason = self.policy.address_refusal(address)
            if reason:
                said = reason if literal is not None else f"{host} resolves to {reason}"
                return _Pinned(addresses=addresses, refusal=said)
        return _Pinned(addresses=addresses)

    def _refuse(self, tile: int, host: str, what: str, reason: str) -> None:
        what = what if len(what) <= MAX_TARGET_TEXT else what[:MAX_TARGET_TEXT - 1] + "…"
        if len(self.refusals) >= MAX_REFUSALS_KEPT:
            self.refusals_dropped += 1  # counted, and still on the tile's timeline (below), but not kept here
        else:
            self.refusals.append({"tile": tile, "host": _key(host), "target": what, "reason": reason,
                                  "at": time.time()})
        if self._on_refused is not None:
            with contextlib.suppress(Exception):
                self._on_refused(tile, what, reason)

    async def _connect(self, tile: int, host: str, port: int,
                       what: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        hosts = self._hosts_per_tile.setdefault(tile, set())
        if _key(host) not in hosts and len(hosts) >= MAX_HOSTS_PER_TILE:
            raise EgressRefused(f"this tile already reached {MAX_HOSTS_PER_TILE} different hosts")
        hosts.add(_key(host))
        pin = await self._resolve(host)
        if pin.refusal:
            self._refuse(tile, host, what, pin.refusal)
            raise EgressRefused(pin.refusal)
        if not 0 < port < 65536:
            raise EgressRefused(f"port {port} is not a TCP port")
        last: Exception | None = None
        for address in pin.addresses:
            try:
                return await asyncio.wait_for(asyncio.open_connection(address, port, limit=CHUNK * 2),
                                              CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                last = exc
        why = ("connection refused" if isinstance(last, ConnectionRefusedError) else
               "no answer in time" if isinstance(last, TimeoutError) else str(last))
        message = f"could not connect to {host}:{port} ({', '.join(pin.addresses)}): {why}"
        self.unreachable[(tile, _key(host))] = message
        raise ConnectionError(message)

    # -- the protocol --

    async def _serve(self, tile: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                await _reply(writer, 400, "not an HTTP/1.x proxy request")
                return
            method, target, _version = parts
            if method == "CONNECT":
                await self._tunnel(tile, target, reader, writer)
            else:
                await self._forward(tile, reader, writer, method=method, target=target, header_lines=lines[1:])
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _tunnel(self, tile: int, target: str, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        host, _, port_text = target.rpartition(":")
        host = host.strip("[]")
        if not host or not port_text.isdigit():
            await _reply(writer, 400, f"CONNECT needs host:port, not {target[:200]!r}")
            return
        try:
            up_reader, up_writer = await self._connect(tile, host, int(port_text), target)
        except EgressRefused as exc:
            await _reply(writer, 403, f"refused by the capture's network rule: {exc}")
            return
        except (ConnectionError, OSError) as exc:
            await _reply(writer, 502, str(exc))
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await _pipe(reader, writer, up_reader, up_writer)

    async def _forward(self, tile: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                       method: str, target: str, header_lines: list[str]) -> None:
        try:
            url = urlsplit(target)
            port = url.port or 80
        except ValueError:
            await _reply(writer, 400, f"bad request target {target[:200]!r}")
            return
        if url.scheme != "http" or not url.hostname:
            await _reply(writer, 400, f"only http:// requests are forwarded (https goes through CONNECT), not "
                                      f"{target[:200]!r}")
            return
        try:
            up_reader, up_writer = await self._connect(tile, url.hostname, port, target)
        except EgressRefused as exc:
            await _reply(writer, 403, f"refused by the capture's network rule: {exc}")
            return
        except (ConnectionError, OSError) as exc:
            await _reply(writer, 502, str(exc))
            return
        headers = [line for line in header_lines if line]
        names = [line.split(":", 1)[0].strip().lower() for line in headers]
        upgrade = "upgrade" in names
        kept = [line for line, name in zip(headers, names, strict=True) if name not in _HOP_BY_HOP]
        if upgrade:
            kept += [line for line, name in zip(headers, names, strict=True) if name == "connection"]
        else:
            kept.append("Connection: close")
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        request = f"{method} {path} HTTP/1.1\r\n" + "".join(line + "\r\n" for line in kept) + "\r\n"
        up_writer.write(request.encode("latin-1"))
        if upgrade:  # a WebSocket: after the handshake the connection is the tunnel, both ways
            await _pipe(reader, writer, up_reader, up_writer)
            return
        await _exchange(reader, writer, up_reader, up_writer, _body_length(headers, names))


def _body_length(headers: list[str], names: list[str]) -> int | None:
    """The request body's length; None when it is chunked (it then runs until the response is complete)."""
    for line, name in zip(headers, names, strict=True):
        if name == "transfer-encoding" and "chunked" in line.lower():
            return None
    for line, name in zip(headers, names, strict=True):
        if name == "content-length":
            value = line.split(":", 1)[1].strip()
            return int(value) if value.isdigit() else 0
    return 0


async def _exchange(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter, body: int | None) -> None:
    """One request's body to the server, then its response to the client with `Connection: close`, then the end:
    nothing the client sends after its request's body ever reaches this server."""
    async def send_body() -> None:
        if body is None:
            await _copy(client_reader, up_writer)
            return
        left = body
        while left > 0:
            data = await asyncio.wait_for(client_reader.read(min(CHUNK, left)), IDLE_TIMEOUT)
            if not data:
                return
            up_writer.write(data)
            await up_writer.drain()
            left -= len(data)

    sending = asyncio.ensure_future(send_body())
    try:
        head = await asyncio.wait_for(up_reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        kept = [line for line in lines[1:] if line and line.split(":", 1)[0].strip().lower() not in _HOP_BY_HOP]
        response = lines[0] + "\r\n" + "".join(line + "\r\n" for line in kept) + "Connection: close\r\n\r\n"
        client_writer.write(response.encode("latin-1"))
        await _copy(up_reader, client_writer)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError, OSError):
        pass
    finally:
        sending.cancel()
        with contextlib.suppress(BaseException):
            await sending
        with contextlib.suppress(Exception):
            up_writer.close()


def _key(host: str) -> str:
    """One spelling per DNS name: lower case, no brackets, no trailing dot ("example.com." is "example.com")."""
    return host.strip("[]").lower().removesuffix(".")


async def _reply(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    body = (reason + "\n").encode("utf-8")
    phrase = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway", 503: "Service Unavailable"}.get(status,
                                                                                                     "Error")
    header = reason.encode("ascii", "replace").decode("ascii").replace("\r", " ").replace("\n", " ")[:500]
    writer.write(f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\nX-Wangzheng-Egress: {header}\r\n\r\n"
                 .encode("latin-1") + body)
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Until the end of `source`; a silence of IDLE_TIMEOUT ends it too."""
    while data := await asyncio.wait_for(source.read(CHUNK), IDLE_TIMEOUT):
        sink.write(data)
        await sink.drain()


async def _pipe(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
    """A tunnel (CONNECT, WebSocket), both ways, until the server ends it or the client goes: once the client has
    stopped sending, the server gets CLOSE_GRACE to finish before both sides are closed, so a request the browser
    abandoned holds no connection open."""
    upstream = asyncio.ensure_future(_copy(up_reader, client_writer))
    downstream = asyncio.ensure_future(_copy(client_reader, up_writer))
    try:
        done, _ = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        if downstream in done and upstream not in done and downstream.exception() is None:
            with contextlib.suppress(OSError, RuntimeError):
                if up_writer.can_write_eof():
                    up_writer.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(upstream), CLOSE_GRACE)
    except (ConnectionError, OSError, TimeoutError):
        pass
    finally:
        for task in (upstream, downstream):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            up_writer.close()
