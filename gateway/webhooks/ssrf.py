"""The SSRF guard: where a webhook may point.

Only http(s) URLs with a host; every address the host resolves to must be public, i.e. none of
loopback, private (RFC 1918, IPv6 ULA), link-local (which holds the cloud metadata services,
169.254.169.254 and fd00:ec2::254), CGNAT (100.64/10, Alibaba's metadata 100.100.100.200),
multicast, reserved, documentation or "this network" ranges; IPv4 addresses embedded in IPv6
(mapped, NAT64, 6to4) are judged as IPv4. `allow_private_networks` lifts the address check (the
scheme check stays).

The check runs when the URL is set (`check_url`, 400 at the API) and again at every delivery:
IP literals by `check_host`, names by `GuardedResolver` (gateway/webhooks/sender.py), the
resolver of the delivery session, so the address that is checked is the address that is connected
to (DNS rebinding gets a refused connection, not a request to the new address).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT (and Alibaba Cloud's metadata 100.100.100.200)
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local: AWS/GCP/Azure metadata 169.254.169.254
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/128",
        "::1/128",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "fc00::/7",  # unique local (AWS IPv6 metadata fd00:ec2::254)
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


class BlockedAddress(OSError):
    """A webhook URL that points (or resolves) somewhere the guard refuses."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in SIX_TO_FOUR:
        return address.sixtofour
    return None


def is_blocked(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_blocked(embedded)
        if address.scope_id:
            return True
    if any(address in network for network in BLOCKED_NETWORKS):
        return True
    return not address.is_global


def check_address(address: str, allow_private: bool) -> None:
    if allow_private:
        return
    if is_blocked(ipaddress.ip_address(address)):
        raise BlockedAddress(f"the address {address} is not public")


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; BlockedAddress when it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BlockedAddress("the URL is malformed") from exc
    if parts.scheme not in ("http", "https"):
        raise BlockedAddress("only http:// and https:// URLs are allowed")
    if not parts.hostname:
        raise BlockedAddress("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise BlockedAddress("the URL must not carry credentials")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def check_host(host: str, allow_private: bool) -> bool:
    """Checks an IP literal (True when `host` is one); names are left to the resolver."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    check_address(host, allow_private)
    return True


async def check_url(url: str, allow_private: bool) -> None:
    """Every address the URL's host resolves to now must be allowed."""
    host, port = parse_url(url)
    if check_host(host, allow_private):
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise BlockedAddress(f"the host {host} cannot be resolved") from exc
    for info in infos:
        check_address(str(info[4][0]), allow_private)


def describe(exc: BaseException) -> str:
    """A short reason for the delivery log, naming a refused address when that was the cause."""
    seen: set[int] = set()
    current: Any = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BlockedAddress):
            return f"refused: {current}"
        current = getattr(current, "os_error", None) or current.__cause__
    return f"{exc.__class__.__name__}: {exc}"[:200]
