"""Which webhook URLs Vipps MobilePay registers and delivers to.

From the Webhooks API spec's ``url`` field (REFERENCE.md §6.1): "Must be a valid,
world-reachable URL. The URL must use HTTPS. Can not be a URL that redirects to a different URL.
We don't send requests to all ports, so to be safe use common ports such as: 80, 443, 8080."

The spec's "such as" leaves the port list open; we hold to the three it names, so a URL we accept
is one Vipps is known to deliver to. A redirect cannot be seen from the URL and is not checked.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

DELIVERY_PORTS = (443, 80, 8080)


def webhook_url_refusal(url: str) -> str | None:
    """Why Vipps would not take ``url`` as a webhook target, or None if it would."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return f"{url} is not a valid URL"
    host = parts.hostname
    if not host or parts.scheme not in ("http", "https"):
        return f"{url} is not an absolute http(s) URL"
    if parts.scheme != "https":
        return "Vipps delivers webhooks over HTTPS only"
    if _local(host):
        return f"{host} is not reachable from the internet, and Vipps must reach it"
    if (port or 443) not in DELIVERY_PORTS:
        ports = ", ".join(str(p) for p in DELIVERY_PORTS)
        return f"Vipps does not deliver to port {port}; use one of {ports}"
    return None


def _local(host: str) -> bool:
    lowered = host.lower()
    if lowered == "localhost" or lowered.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        address = ipaddress.ip_address(lowered)
    except ValueError:
        return False
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_unspecified
        or address.is_reserved
    )
