"""Which URLs a capture may visit."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from evidence import TargetRefused, UsageError

MAX_TILES = 9


def _refused_address(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private:
        return "private"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return "reserved"
    return None


def validate_url(url: str, *, allow_private: bool) -> str:
    """Return the URL if a capture may visit it, else raise a `UsageError` saying why."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not an http(s) URL: {url!r} (give a full address such as https://example.com/)")
    try:
        _ = parts.port
    except ValueError as exc:
        raise UsageError(f"bad port in URL {url!r}") from exc
    if allow_private:
        return url
    host = parts.hostname
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror:
        # An unresolvable host is not refused here: the tile records the DNS failure as evidence.
        return url
    for info in infos:
        kind = _refused_address(str(info[4][0]))
        if kind:
            raise TargetRefused(
                f"refusing {url}: {host} resolves to a {kind} address {info[4][0]}; "
                "set WZ_CAPTURE_ALLOW_PRIVATE=1 to capture local pages (demo and tests only)"
            )
    return url


def validate_targets(urls: list[str], *, allow_private: bool) -> list[str]:
    if not urls:
        raise UsageError("give at least one URL to capture")
    if len(urls) > MAX_TILES:
        raise UsageError(f"at most {MAX_TILES} URLs can be recorded at once, {len(urls)} given")
    return [validate_url(url, allow_private=allow_private) for url in urls]
