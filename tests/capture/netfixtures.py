"""Small HTTP servers on loopback addresses of their own (127.0.0.2, 127.0.0.3, ...), recording every request:
the other side of the capture's network rule."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

Route = Callable[["RecordingServer"], tuple[int, dict[str, str], bytes]]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class RecordingServer:
    """Serves `routes` (path -> status, headers, body; a route may be a function of the server) and records requests."""

    address: str
    routes: dict[str, tuple[int, dict[str, str], bytes] | Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0  # 0: any free port

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.seen.append(Seen("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
                route = server.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    status, headers, body = 404, {"Content-Type": "text/plain"}, b"not here\n"
                else:
                    status, headers, body = route(server) if callable(route) else route
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._httpd = ThreadingHTTPServer((self.address, self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://{self.address}:{self.port}"

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def html(body: str) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "text/html; charset=utf-8"}, body.encode()
