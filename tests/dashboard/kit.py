"""Shared constants and helpers of the dashboard tests."""

from __future__ import annotations

import re
from typing import Any

import httpx

KEY = "dash-write-key-0001"
ADMIN = "dash-admin-token-0001"
FORWARD_KEY = "forward-secret-key-0001"
CHROMIUM = "/usr/bin/chromium"
BEARER = {"Authorization": f"Bearer {ADMIN}"}


def config(peer_url: str) -> dict[str, Any]:
    """A Segment source -> the profile store and a Segment forwarder pointed at ``peer_url``."""
    return {
        "server": {"admin_token": ADMIN},
        "sources": [{"name": "web", "plugin": "segment", "write_key": KEY}],
        "destinations": [
            {"name": "profiles", "plugin": "profiles", "sources": ["web"],
             "settings": {"preferences": {"$locale": "language", "$timezone": "timezone"},
                          "workflows": [{"name": "welcome", "event": "User Registered"}]}},
            {"name": "forward", "plugin": "segment", "sources": ["web"],
             "settings": {"write_key": FORWARD_KEY, "base_url": peer_url},
             "delivery": {"retry_initial_seconds": 0.05, "retry_max_seconds": 0.2}},
        ],
    }


def csrf_of(html: str) -> str:
    """The CSRF token of a dashboard page (the hidden ``csrf`` field)."""
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no csrf field in the page"
    return match.group(1)


def login(client: httpx.Client, token: str = ADMIN, next_path: str = "/ui/events") -> httpx.Response:
    """Log ``client`` in through the form (GET for the nonce cookie, then POST)."""
    page = client.get("/ui/login", params={"next": next_path})
    return client.post("/ui/login", data={"token": token, "csrf": csrf_of(page.text),
                                          "next": next_path})
