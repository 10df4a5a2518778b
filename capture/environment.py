"""The capture environment: required programs, their versions, and the provenance record."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ntplib
import psutil

from evidence import ClockCheck, ComponentMissing, Provenance, Settings

DEBIAN_CHROMIUM = Path("/usr/lib/chromium/chromium")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                   "no_proxy")


def resolve_chromium(setting: str) -> str:
    """The Chromium binary itself: Debian's /usr/bin/chromium is a wrapper that adds flags of its own."""
    if setting == "chromium" and DEBIAN_CHROMIUM.exists():
        return str(DEBIAN_CHROMIUM)
    found = shutil.which(setting)
    if found is None:
        raise ComponentMissing(f"Chromium not found ({setting!r}); run ./scripts/setup or set WZ_CHROMIUM")
    return found


def _version(argv: list[str], pattern: str = r"(\d+(?:\.\d+)+)") -> str | None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (result.stdout + "\n" + result.stderr).strip()
    match = re.search(pattern, text)
    if result.returncode not in (0, 1) or match is None:
        return None
    line = next((ln for ln in text.splitlines() if match.group(1) in ln), text.splitlines()[0])
    return line.strip()


def check_components(settings: Settings) -> dict[str, str]:
    """Versions of every program a capture needs; raises naming all that are missing."""
    versions: dict[str, str] = {}
    missing: list[str] = []
    try:
        chromium = resolve_chromium(settings.chromium)
    except ComponentMissing:
        chromium = None
    probes: dict[str, list[str] | None] = {
        "chromium": [chromium, "--version"] if chromium else None,
        "ffmpeg": [settings.ffmpeg, "-version"],
        "ffprobe": [settings.ffprobe, "-version"],
        # Xvfb has no version flag; the package manager knows it.
        "xvfb": ["dpkg-query", "-W", "-f=xvfb ${Version}\n", "xvfb"] if shutil.which(settings.xvfb) else None,
        "pulseaudio": [settings.pulseaudio, "--version"],
        "pactl": ["pactl", "--version"],
    }
    for name, argv in probes.items():
        if argv is None:
            missing.append(name)
            continue
        found = _version(argv)
        if found is None:
            missing.append(name)
        else:
            versions[name] = found
    if missing:
        raise ComponentMissing(
            f"missing or broken: {', '.join(sorted(set(missing)))}; run ./scripts/setup to install them"
        )
    versions["playwright"] = metadata.version("playwright")
    versions["python"] = sys.version.split()[0]
    versions["ffmpeg-python"] = metadata.version("ffmpeg-python")
    return versions


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    result = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return result.stdout.strip() + ("-dirty" if dirty else "")


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _ip_addresses() -> tuple[str, ...]:
    addresses = []
    for name, entries in psutil.net_if_addrs().items():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                addresses.append(f"{name}:{entry.address}")
    return tuple(sorted(addresses))


def _sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def resolve_hosts(urls: list[str]) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """DNS answers for every host captured, as this machine saw them at capture time."""
    answers: dict[str, tuple[str, ...]] = {}
    errors: dict[str, str] = {}
    for url in urls:
        host = urlsplit(url).hostname
        if not host or host in answers or host in errors:
            continue
        try:
            infos = socket.getaddrinfo(host, None)
            answers[host] = tuple(sorted({str(info[4][0]) for info in infos}))
        except socket.gaierror as exc:
            errors[host] = str(exc)
    return answers, errors


def check_clock(server: str, timeout: float) -> ClockCheck:
    """The local clock's offset from an NTP server; "unavailable" with the reason when unreachable."""
    checked = datetime.now(UTC)
    try:
        response = ntplib.NTPClient().request(server, version=3, timeout=timeout)
    except (ntplib.NTPException, OSError) as exc:
        return ClockCheck(server=server, checked_at=checked, error=f"unavailable: {exc}")
    return ClockCheck(server=server, checked_at=checked, offset_seconds=float(response.offset),
                      round_trip_seconds=float(response.delay))


def collect_provenance(
    settings: Settings,
    *,
    urls: list[str],
    components: dict[str, str],
    launch_flags: list[str],
    options: dict[str, Any],
    operator: str,
    case_id: str | None,
    dns: dict[str, tuple[str, ...]] | None = None,
    dns_errors: dict[str, str] | None = None,
) -> Provenance:
    """The environment of a capture. `dns` is what the capture itself resolved (its egress proxy pins each answer);
    without it (recovery) the hosts are looked up now, which is said in the options."""
    if dns is None:
        dns, dns_errors = resolve_hosts(urls)
    resolv = Path("/etc/resolv.conf")
    return Provenance(
        tool="wangzheng",
        tool_version=metadata.version("wangzheng"),
        git_commit=_git_commit(),
        python=sys.version.split()[0],
        components=components,
        os=_os_name(),
        kernel=platform.release(),
        hostname=socket.gethostname(),
        ip_addresses=_ip_addresses(),
        user_agent=None,
        launch_flags=tuple(launch_flags),
        options=options,
        operator=operator,
        case_id=case_id,
        proxy={name: os.environ[name] for name in PROXY_VARIABLES if name in os.environ},
        etc_hosts_sha256=_sha256_of(Path("/etc/hosts")),
        resolv_conf=resolv.read_text() if resolv.exists() else None,
        dns=dns,
        dns_errors=dns_errors or {},
        clock=check_clock(settings.ntp_server, settings.ntp_timeout_seconds),
        timezone=time.strftime("%Z%z"),
        browser_profile="a fresh, empty Chromium profile per tile, no extensions, deleted after the capture",
    )
