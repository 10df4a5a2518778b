"""Which URLs a capture may visit, and which addresses its browsers and stream copies may reach.

A URL is parsed the way the browser parses it (the WHATWG URL Standard, by ada, the parser Node.js uses) and
handed on in that canonical form, so Chromium, ffmpeg and our checks all read the same host. A URL that Python's
own parser reads differently (`http://127.0.0.1:80\\@x.invalid/`, `http://2130706433/`, percent-encoded hosts)
is refused outright: such spellings exist to confuse exactly this kind of check.

Every host is resolved once per capture and every address it resolves to must be allowed; the browsers and the
stream copies then reach the network only through the capture's egress proxy (capture/egress.py), which
connects to exactly those addresses, so no later lookup (DNS rebinding) can move a name onto a private address.

Allowed by default: globally routable addresses. Refused unless allowlisted: loopback, private, link-local,
shared (CGNAT), multicast, reserved and unspecified addresses, IPv4 inside IPv6 (mapped, NAT64, 6to4) included,
and `localhost` with every `*.localhost` name (browsers answer those themselves). `WZ_CAPTURE_ALLOW_NETWORKS`
allowlists networks (CIDR, comma-separated); `WZ_CAPTURE_ALLOW_PRIVATE=1` allows every non-global address.
"""

from __future__ import annotations

import ipaddress
import socket
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ada_url import URL as WhatwgUrl
from ada_url import idna_to_ascii

from evidence import ConfigurationError, TargetRefused, UsageError

MAX_TILES = 9
MAX_URL_LENGTH = 8192
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], Sequence[str]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_SHARED = ipaddress.ip_network("100.64.0.0/10")


def system_resolver(host: str) -> list[str]:
    """Every address the system resolver gives for `host`, in its order, without duplicates."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if address not in seen:
            seen.append(address)
    return seen


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries to an IPv4 host, if it does."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def _kind(ip: IPAddress) -> str | None:
    """Why an address is not globally routable, or None when it is."""
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified (0.0.0.0 and :: reach this machine)"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared address space (carrier-grade NAT)"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


@dataclass(frozen=True)
class TargetPolicy:
    """The network rule of a capture: globally routable addresses, plus what the settings allowlist."""

    allow_networks: tuple[Network, ...] = ()
    allow_private: bool = False

    @classmethod
    def from_settings(cls, allow_networks: str, allow_private: bool) -> TargetPolicy:
        networks: list[Network] = []
        for text in (part.strip() for part in allow_networks.split(",")):
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError as exc:
                raise ConfigurationError(f"WZ_CAPTURE_ALLOW_NETWORKS: {text!r} is not a network in CIDR form "
                                         f"(e.g. 10.20.0.0/16): {exc}") from exc
        return cls(allow_networks=tuple(networks), allow_private=allow_private)

    def describe(self) -> dict[str, object]:
        """For the provenance: what the capture's browsers were allowed to reach."""
        return {"global_addresses": True, "all_private_addresses": self.allow_private,
                "allowlisted_networks": [str(n) for n in self.allow_networks]}

    def _allowlisted(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allow_networks)

    def address_refusal(self, address: str) -> str | None:
        """Why the capture must not connect to `address`, or None when it may."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"{address!r} is not an IP address"
        if self.allow_private or self._allowlisted(ip):
            return None
        inner = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
        if inner is not None:
            # The IPv4 host it reaches decides: ::ffff:127.0.0.1 is this machine, 64:ff9b::10.0.0.1 a private one.
            if self._allowlisted(inner):
                return None
            kind = _kind(inner)
            return f"{address} is an IPv6 form of the {kind} IPv4 address {inner}" if kind else None
        kind = _kind(ip)
        return f"{address} is a {kind} address" if kind else None

    def host_refusal(self, host: str) -> str | None:
        """Names a browser answers itself, without DNS: `localhost` and every `*.localhost`."""
        name = host.rstrip(".").lower()
        if name == "localhost" or name.endswith(".localhost"):
            if self.allow_private or self._allowlisted(ipaddress.ip_address("127.0.0.1")):
                return None
            return f"{host} is a loopback name (browsers resolve localhost and *.localhost to this machine)"
        return None


@dataclass(frozen=True)
class Target:
    """A URL a capture may visit, in the canonical form every component is given."""

    url: str  # the WHATWG serialization: what Chromium and ffmpeg get
    scheme: str
    host: str  # ASCII (IDNA) host; IPv6 without brackets
    port: int
    addresses: tuple[str, ...] = field(default=())  # filled in when resolved


def _ascii_host(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def parse_target(url: str) -> Target:
    """Parse a URL as a browser does; refuse what is not an http(s) URL or what parsers could read differently."""
    if not isinstance(url, str) or not url:
        raise UsageError("give a full address such as https://example.com/")
    if len(url) > MAX_URL_LENGTH:
        raise UsageError(f"URL longer than {MAX_URL_LENGTH} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") or ch.isspace() for ch in url):
        raise UsageError(f"URL {url[:200]!r} holds spaces or control characters")
    try:
        parsed = WhatwgUrl(url)
    except ValueError as exc:
        raise UsageError(f"not an http(s) URL: {url[:200]!r} (give a full address such as https://example.com/)") \
            from exc
    scheme = parsed.protocol.rstrip(":")
    if scheme not in ("http", "https") or not parsed.hostname:
        raise UsageError(f"not an http(s) URL: {url[:200]!r} (give a full address such as https://example.com/)")
    if parsed.username or parsed.password:
        raise TargetRefused(f"refusing {url[:200]}: user names and passwords in URLs are not accepted")
    host = _ascii_host(parsed.hostname)
    port = int(parsed.port) if parsed.port else (443 if scheme == "https" else 80)
    # What Python's parser (and any tool built on it) makes of the same text must agree with the browser.
    if "\\" in url:
        raise TargetRefused(f"refusing {url[:200]}: a backslash is read as '/' by browsers and not by other "
                            "parsers; write the URL with '/'")
    try:
        python = urlsplit(url)
        python_host = python.hostname or ""
        python_port = python.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise UsageError(f"bad port or host in URL {url[:200]!r}: {exc}") from exc
    if not _same_host(python_host, host) or python_port != port:
        raise TargetRefused(f"refusing {url[:200]}: browsers read its host as {host}:{port}, other parsers as "
                            f"{python_host or '(none)'}:{python_port}; write the address plainly")
    return Target(url=parsed.href, scheme=scheme, host=host, port=port)


def _same_host(python_host: str, whatwg_host: str) -> bool:
    """Whether Python's reading of a host names what the browser's does (case, IDNA and IPv6 spelling aside)."""
    python_ip, whatwg_ip = _literal(python_host), _literal(whatwg_host)
    if python_ip is not None or whatwg_ip is not None:
        return python_ip == whatwg_ip
    try:
        return bytes(idna_to_ascii(python_host)).decode("ascii").lower() == whatwg_host.lower()
    except (ValueError, UnicodeError):
        return False


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def resolve_target(target: Target, policy: TargetPolicy, resolver: Resolver = system_resolver) -> Target:
    """Resolve the target's host once and check every address; refused or unresolvable hosts raise."""
    refusal = policy.host_refusal(target.host)
    if refusal:
        raise TargetRefused(f"refusing {target.url}: {refusal}; {_ALLOW_HINT}")
    literal = _literal(target.host)
    if literal is not None:
        addresses: Sequence[str] = [str(literal)]
    else:
        try:
            addresses = list(resolver(target.host))
        except (OSError, UnicodeError) as exc:
            raise TargetRefused(f"refusing {target.url}: {target.host} does not resolve ({exc}); a name that "
                                "does not resolve cannot be checked, so it is not captured") from exc
        if not addresses:
            raise TargetRefused(f"refusing {target.url}: {target.host} resolves to no address")
    for address in addresses:
        reason = policy.address_refusal(address)
        if reason:
            said = reason if literal is not None else f"{target.host} resolves to {reason}"
            raise TargetRefused(f"refusing {target.url}: {said}; {_ALLOW_HINT}")
    return Target(url=target.url, scheme=target.scheme, host=target.host, port=target.port,
                  addresses=tuple(addresses))


_ALLOW_HINT = ("allowlist the network with WZ_CAPTURE_ALLOW_NETWORKS=CIDR (or WZ_CAPTURE_ALLOW_PRIVATE=1 for the "
               "demo and tests)")


def validate_url(url: str, *, policy: TargetPolicy, resolver: Resolver = system_resolver) -> Target:
    """The canonical, resolved target a capture may visit, or an error that says why not."""
    return resolve_target(parse_target(url), policy, resolver)


def validate_targets(urls: list[str], *, policy: TargetPolicy, resolver: Resolver = system_resolver) -> list[Target]:
    if not urls:
        raise UsageError("give at least one URL to capture")
    if len(urls) > MAX_TILES:
        raise UsageError(f"at most {MAX_TILES} URLs can be recorded at once, {len(urls)} given")
    return [validate_url(url, policy=policy, resolver=resolver) for url in urls]
