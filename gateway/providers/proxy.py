"""Egress proxies for the providers' HTTP client: which proxy, if any, one URL goes through.

    policy = proxy_policy(settings.proxy_url, settings.proxy_url_env, os.environ)
    proxy = policy.choose("https", "api.openai.com", 443)     # a Proxy, or None: direct

The environment, as curl and requests read it (docs/decisions/0013-bounds-and-egress.md):
- `https_proxy` / `HTTPS_PROXY` for https URLs, `http_proxy` / `HTTP_PROXY` for http URLs, then
  `all_proxy` / `ALL_PROXY` for both; the lowercase name wins; an empty value is unset.
- `no_proxy` / `NO_PROXY`: comma- or space-separated; `*` alone sends everything direct; a name
  matches itself and its subdomains (`example.com` and `.example.com` both match
  `api.example.com` and `example.com`; a leading `*.` is read as `.`); `name:port` matches that
  port only; an IP address matches itself and a CIDR block (`10.0.0.0/8`, `fd00::/8`) the
  addresses in it, when the URL's host is an IP literal (names are not resolved to match).

A provider's `proxy_url` overrides the environment for every request of that provider (NO_PROXY
does not apply to it); `proxy_url = "none"` sends it direct. Credentials come only from
`proxy_url_env` (a variable holding the whole URL) or the environment, never from the file.

Proxies are `http://` (optionally with `user:password@`, sent as `Proxy-Authorization: Basic`):
plain http goes as an absolute-URI request, https through a CONNECT tunnel with TLS to the
origin inside it. `https://` and `socks` proxies are not supported (a clear error at start-up).
Neither a credential nor the authorization value ever appears in a message or a repr.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from collections.abc import Mapping
from typing import Final, NamedTuple
from urllib.parse import unquote, urlsplit

__all__ = ["NoProxy", "Proxy", "ProxyPolicy", "TunnelRefused", "open_tunnel", "proxy_policy"]

DIRECT: Final = "none"  # the `proxy_url` that means "no proxy for this provider"
MAX_TUNNEL_ANSWER: Final = 16 * 1024  # the proxy's answer to CONNECT, headers included


class TunnelRefused(ConnectionError):
    """The proxy did not open the tunnel (its status, or an answer that is not HTTP). The
    request never reached the origin."""


async def open_tunnel(loop: asyncio.AbstractEventLoop, sock: socket.socket, request: bytes) -> None:
    """Sends CONNECT on a fresh connection to the proxy and reads its answer, up to the blank
    line; a 2xx leaves `sock` a tunnel to the origin. Raises TunnelRefused or OSError (the
    caller's timeout bounds the whole exchange)."""
    await loop.sock_sendall(sock, request)
    answer = b""
    while b"\r\n\r\n" not in answer:
        if len(answer) > MAX_TUNNEL_ANSWER:
            raise TunnelRefused("the proxy's answer to CONNECT is too long")
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise TunnelRefused("the proxy closed the connection instead of opening a tunnel")
        answer += chunk
    head, _, early = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split(None, 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        raise TunnelRefused("the proxy did not answer CONNECT with HTTP")
    status = int(status_line[1]) if status_line[1].isdigit() else 0
    if status in (401, 407):  # tinyproxy answers wrong credentials with 401
        raise TunnelRefused(f"the proxy wants other credentials (HTTP {status})")
    if not 200 <= status < 300:
        raise TunnelRefused(f"the proxy refused the tunnel (HTTP {status})")
    if early:  # the origin speaks first only after our TLS hello: anything else is not a tunnel
        raise TunnelRefused("the proxy sent bytes after opening the tunnel")


class Proxy(NamedTuple):
    host: str  # an IPv6 literal without brackets
    port: int
    authorization: str | None  # the Proxy-Authorization value: a secret

    def __repr__(self) -> str:
        return f"Proxy({self.display})"

    @property
    def display(self) -> str:
        """host:port, for messages (never the credentials)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_proxy_url(url: str, source: str) -> Proxy:
    """`source` names where the URL came from, for the error message (which never quotes the
    URL: it may hold a password)."""
    if "://" not in url:
        url = f"http://{url}"  # as curl: a bare host:port is an http proxy
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{source} is not a valid proxy URL") from exc
    scheme = parts.scheme.lower()
    if scheme != "http":
        raise ValueError(
            f"{source}: only http:// proxies are supported (CONNECT carries https), not {scheme}://"
        )
    if not parts.hostname:
        raise ValueError(f"{source}: the proxy URL has no host")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return Proxy(parts.hostname, port or 80, authorization)


class NoProxy:
    """The NO_PROXY rules (see the module docstring)."""

    def __init__(self, value: str) -> None:
        self.everything = False
        self._names: list[tuple[str, int | None]] = []  # (domain, port or None)
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in value.replace(",", " ").split():
            entry = raw.strip().lower()
            if entry == "*":
                self.everything = True
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            host, port = _split_port(entry)
            try:
                self._networks.append(ipaddress.ip_network(host, strict=False))
                continue  # an address with a port: the address is what counts
            except ValueError:
                pass
            name = host.removeprefix("*").lstrip(".").rstrip(".")
            if name:
                self._names.append((name, port))

    def matches(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        host = host.lower().rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None and any(address in net for net in self._networks):
            return True
        return any(
            (host == name or host.endswith(f".{name}")) and (wanted is None or wanted == port)
            for name, wanted in self._names
        )


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6]:port
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None


class ProxyPolicy:
    """Which proxy a request goes through: fixed for a provider, or from the environment."""

    def __init__(
        self,
        http: Proxy | None = None,
        https: Proxy | None = None,
        no_proxy: NoProxy | None = None,
    ) -> None:
        self._http = http
        self._https = https
        self._no_proxy = no_proxy

    def choose(self, scheme: str, host: str, port: int) -> Proxy | None:
        proxy = self._https if scheme == "https" else self._http
        if proxy is None or (self._no_proxy is not None and self._no_proxy.matches(host, port)):
            return None
        return proxy

    def __repr__(self) -> str:
        return f"ProxyPolicy(http={self._http!r}, https={self._https!r})"


def _first(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def proxy_policy(proxy_url: str, proxy_url_env: str, environ: Mapping[str, str]) -> ProxyPolicy:
    """One provider's policy from its `proxy_url` / `proxy_url_env` and the environment.
    Raises ValueError (naming the setting or variable, never its value) for an unusable URL."""
    if proxy_url_env:
        value = environ.get(proxy_url_env, "").strip()
        if value:
            proxy = parse_proxy_url(value, f"the variable {proxy_url_env} (proxy_url_env)")
            return ProxyPolicy(proxy, proxy)
    if proxy_url.strip().lower() == DIRECT:
        return ProxyPolicy()
    if proxy_url:
        proxy = parse_proxy_url(proxy_url, "proxy_url")
        return ProxyPolicy(proxy, proxy)
    found: dict[str, Proxy | None] = {}
    for scheme in ("http", "https"):
        chosen = _first(
            environ, f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY"
        )
        found[scheme] = None if chosen is None else parse_proxy_url(chosen[1], chosen[0])
    no_proxy = _first(environ, "no_proxy", "NO_PROXY")
    return ProxyPolicy(found["http"], found["https"], NoProxy(no_proxy[1]) if no_proxy else None)
