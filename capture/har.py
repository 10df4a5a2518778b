"""A HAR 1.2 network log built from Playwright's request events.

Playwright can only write HAR for contexts it creates; our tiles are attached over CDP to a browser
that was already running, so the log is assembled here. Bodies are not kept (media would be huge):
the DOM snapshots and the stream copies hold the content.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from playwright.async_api import Request, Response


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _headers(headers: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in headers.items()]


class HarRecorder:
    """Collects one tile's requests into HAR entries, in the order they were sent."""

    def __init__(self, creator_comment: str = "") -> None:
        self._comment = creator_comment
        self._entries: dict[int, dict[str, Any]] = {}
        self._order: list[int] = []

    def _entry(self, request: Request) -> dict[str, Any]:
        key = id(request)
        entry = self._entries.get(key)
        if entry is None:
            parts = urlsplit(request.url)
            entry = {
                "startedDateTime": _iso(datetime.now(UTC)),
                "time": -1,
                "request": {
                    "method": request.method,
                    "url": request.url,
                    "httpVersion": "HTTP/1.1",
                    "cookies": [],
                    "headers": _headers(request.headers),
                    "queryString": [{"name": k, "value": v} for k, v in parse_qsl(parts.query)],
                    "headersSize": -1,
                    "bodySize": len(request.post_data_buffer or b""),
                },
                "response": {
                    "status": 0,
                    "statusText": "",
                    "httpVersion": "HTTP/1.1",
                    "cookies": [],
                    "headers": [],
                    "content": {"size": -1, "mimeType": "x-unknown"},
                    "redirectURL": "",
                    "headersSize": -1,
                    "bodySize": -1,
                },
                "cache": {},
                "timings": {"send": 0, "wait": -1, "receive": -1},
                "_resourceType": request.resource_type,
            }
            if request.redirected_from is not None:
                entry["_redirectedFrom"] = request.redirected_from.url
            self._entries[key] = entry
            self._order.append(key)
        return entry

    def request(self, request: Request) -> None:
        self._entry(request)

    def response(self, response: Response) -> None:
        entry = self._entry(response.request)
        headers = response.headers
        entry["response"].update(
            {
                "status": response.status,
                "statusText": response.status_text,
                "headers": _headers(headers),
                "content": {"size": -1, "mimeType": headers.get("content-type", "x-unknown")},
                "redirectURL": headers.get("location", ""),
            }
        )
        timing = response.request.timing
        if timing.get("responseStart", -1) >= 0:
            entry["timings"]["wait"] = round(timing["responseStart"] - max(timing.get("requestStart", 0), 0), 3)

    def finished(self, request: Request) -> None:
        entry = self._entry(request)
        timing = request.timing
        if timing.get("responseEnd", -1) >= 0:
            entry["time"] = round(timing["responseEnd"], 3)
            if timing.get("responseStart", -1) >= 0:
                entry["timings"]["receive"] = round(timing["responseEnd"] - timing["responseStart"], 3)

    def failed(self, request: Request) -> None:
        entry = self._entry(request)
        entry["_failure"] = request.failure or "unknown"

    def write(self, path: Path, *, browser_version: str, page_url: str) -> None:
        har = {
            "log": {
                "version": "1.2",
                "creator": {"name": "Wangzheng", "version": "1", "comment": self._comment},
                "browser": {"name": "Chromium", "version": browser_version},
                "pages": [{"startedDateTime": self._first_time(), "id": "page_1", "title": page_url,
                           "pageTimings": {}}],
                "entries": [{**self._entries[key], "pageref": "page_1"} for key in self._order],
            }
        }
        path.write_text(json.dumps(har, ensure_ascii=False, indent=1), encoding="utf-8")

    def _first_time(self) -> str:
        if self._order:
            return str(self._entries[self._order[0]]["startedDateTime"])
        return _iso(datetime.now(UTC))
