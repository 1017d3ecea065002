"""Which webhook URLs we hand to Vipps: only ones it registers and delivers to (HTTPS, reachable
from the internet, one of the ports its spec names). Configuration checks the public URL with
this before the service starts."""

from __future__ import annotations

import pytest

from app.vipps.webhook_urls import webhook_url_refusal


@pytest.mark.parametrize(
    "url",
    [
        "https://pos.example.com/webhooks/vipps",
        "https://pos.example.com:8080/webhooks/vipps",
        "https://8.8.8.8/webhooks/vipps",
    ],
)
def test_a_public_https_url_on_a_delivery_port_is_taken(url: str) -> None:
    assert webhook_url_refusal(url) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://pos.example.com:99999/hooks", "is not a valid URL"),
        ("ftp://pos.example.com/hooks", "is not an absolute http(s) URL"),
        ("/webhooks/vipps", "is not an absolute http(s) URL"),
        ("http://pos.example.com/hooks", "HTTPS only"),
        ("https://localhost/hooks", "not reachable from the internet"),
        ("https://till-server.local/hooks", "not reachable from the internet"),
        ("https://10.0.0.5/hooks", "not reachable from the internet"),
        ("https://127.0.0.1/hooks", "not reachable from the internet"),
        ("https://169.254.1.1/hooks", "not reachable from the internet"),
        ("https://0.0.0.0/hooks", "not reachable from the internet"),
        ("https://pos.example.com:8443/hooks", "does not deliver to port 8443"),
    ],
)
def test_a_url_vipps_would_not_deliver_to_is_refused_with_the_reason(url: str, reason: str) -> None:
    refusal = webhook_url_refusal(url)
    assert refusal is not None
    assert reason in refusal
