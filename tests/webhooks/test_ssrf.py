"""The SSRF guard: which addresses and URLs a webhook may point to."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.webhooks.sender import GuardedResolver
from gateway.webhooks.ssrf import BlockedAddress, check_url, is_blocked, parse_url

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # AWS / GCP / Azure metadata
    "100.100.100.200",  # Alibaba metadata, CGNAT
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "198.18.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",  # AWS IPv6 metadata
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2001:db8::1",
]
ALLOWED = ["93.184.215.14", "1.1.1.1", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_private_loopback_link_local_metadata_and_reserved_addresses_are_refused(
    address: str,
) -> None:
    assert is_blocked(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_blocked(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://93.184.215.14/x",
        "file:///etc/passwd",
        "gopher://93.184.215.14/",
        "http:///no-host",
        "https://user:pw@93.184.215.14/",
        "http://93.184.215.14:99999/",
    ],
)
def test_only_plain_http_and_https_urls_with_a_host_are_accepted(url: str) -> None:
    with pytest.raises(BlockedAddress):
        parse_url(url)


async def test_literal_and_named_hosts_are_checked_when_the_url_is_set() -> None:
    for url in ("http://127.0.0.1:8080/hook", "http://[::1]/hook", "http://localhost/hook"):
        with pytest.raises(BlockedAddress):
            await check_url(url, allow_private=False)
    await check_url("https://93.184.215.14/hook", allow_private=False)
    await check_url("http://localhost/hook", allow_private=True)


async def test_the_delivery_resolver_refuses_names_that_resolve_to_loopback() -> None:
    """The resolver the delivery session connects through: a rebinding name is refused there."""
    guarded = GuardedResolver(allow_private=False)
    try:
        with pytest.raises(BlockedAddress):
            await guarded.resolve("localhost", 80)
    finally:
        await guarded.close()
    allowing = GuardedResolver(allow_private=True)
    try:
        assert await allowing.resolve("localhost", 80)
    finally:
        await allowing.close()
