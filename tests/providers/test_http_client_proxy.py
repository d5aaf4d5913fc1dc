"""The providers' HTTP client through a real forward proxy (tinyproxy, started here) on loopback:
plain http as absolute-URI requests, https through CONNECT with TLS to the origin inside the
tunnel, proxy credentials, NO_PROXY, and pools keyed by proxy."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.providers.http_client import ConnectFailed, HttpClient, _parse_target
from gateway.providers.proxy import ProxyPolicy, proxy_policy
from tests.conftest import free_port
from tests.live_bound import running_timeout
from tests.proxy_server import Tinyproxy, make_certificate

BOUND_S = 20
CREDENTIALS = "klawd:pr0xy-S3CRET-pass"
# The client's own timers (connect, read, headers) are the event loop's, on the wall clock: a
# case that fails in a run this process was stopped in is asked again (tests/asked_again.py).
pytestmark = pytest.mark.asked_again_if_stopped


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("proxy-tls"))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tinyproxy]:
    server = Tinyproxy(tmp_path_factory.mktemp("tinyproxy"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def auth_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tinyproxy]:
    server = Tinyproxy(tmp_path_factory.mktemp("tinyproxy-auth"), CREDENTIALS)
    server.start()
    yield server
    server.stop()


@dataclass
class Origin:
    port: int
    heads: list[bytes] = field(default_factory=list)  # each request's head, as received
    accepted: int = 0
    server_names: list[str | None] = field(default_factory=list)  # SNI of each TLS handshake


@asynccontextmanager
async def origin(tls: ssl.SSLContext | None = None) -> AsyncIterator[Origin]:
    """A keep-alive HTTP/1.1 origin on loopback answering every request with `hello`."""
    state = Origin(0)
    handlers: set[asyncio.Task[None]] = set()
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: state.server_names.append(name)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                state.heads.append(head)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=tls)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        # Each handler ends when its peer (the client, or the proxy after it) hangs up; one
        # still running after a while is cancelled.
        running = [
            t
            for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "cr_code", None) is on_client.__code__
        ]
        if running:
            await asyncio.wait(running, timeout=5)
        for handler in list(handlers):
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def client(policy: ProxyPolicy, cafile: Path | None = None) -> HttpClient:
    http = HttpClient(pool_size=4, connect_timeout_s=5, read_timeout_s=5, proxies=policy)
    if cafile is not None:
        http._ssl = ssl.create_default_context(cafile=str(cafile))  # trust the test's CA
    return http


async def get(http: HttpClient, url: str) -> tuple[int, bytes]:
    response = await http.request("GET", url, {}, None)
    return response.status, await response.read()


def env_policy(**environ: str) -> ProxyPolicy:
    return proxy_policy("", "", environ)


async def test_plain_http_goes_to_the_proxy_as_an_absolute_uri(proxy: Tinyproxy) -> None:
    async with running_timeout(BOUND_S), origin() as upstream:
        http = client(env_policy(HTTP_PROXY=proxy.url()))
        try:
            url = f"http://127.0.0.1:{upstream.port}/v1/chat?x=1"
            assert await get(http, url) == (200, b"hello")
            assert await get(http, url) == (200, b"hello")
        finally:
            await http.close()
    assert b"(tinyproxy/" in upstream.heads[0], "the proxy forwarded it"
    assert upstream.heads[0].startswith(b"GET /v1/chat?x=1 HTTP/1.1\r\n")
    assert f"GET http://127.0.0.1:{upstream.port}/v1/chat?x=1" in proxy.log()


async def test_https_goes_through_a_connect_tunnel_with_tls_to_the_origin(
    proxy: Tinyproxy, certificate: tuple[Path, Path]
) -> None:
    async with running_timeout(BOUND_S), origin(server_tls(certificate)) as upstream:
        http = client(env_policy(HTTPS_PROXY=proxy.url()), cafile=certificate[0])
        try:
            url = f"https://localhost:{upstream.port}/v1/models"
            for _ in range(3):
                assert await get(http, url) == (200, b"hello")
        finally:
            await http.close()
    assert upstream.accepted == 1, "one tunnel, kept alive"
    assert upstream.server_names == ["localhost"], "SNI names the origin, not the proxy"
    assert all(b"Via:" not in head for head in upstream.heads), "end to end TLS: no proxy header"
    assert f"CONNECT localhost:{upstream.port}" in proxy.log()


async def test_the_origin_certificate_is_checked_inside_the_tunnel(
    proxy: Tinyproxy, certificate: tuple[Path, Path]
) -> None:
    async with running_timeout(BOUND_S), origin(server_tls(certificate)) as upstream:
        http = client(env_policy(HTTPS_PROXY=proxy.url()))  # the default trust store
        try:
            with pytest.raises(ConnectFailed, match="SSLCertVerificationError"):
                await get(http, f"https://localhost:{upstream.port}/")
        finally:
            await http.close()


async def test_proxy_credentials_come_from_the_url_and_never_show(
    auth_proxy: Tinyproxy, certificate: tuple[Path, Path]
) -> None:
    async with running_timeout(BOUND_S), origin(server_tls(certificate)) as tls_upstream:
        async with origin() as plain_upstream:
            https_url = f"https://localhost:{tls_upstream.port}/"
            http_url = f"http://127.0.0.1:{plain_upstream.port}/"
            anonymous = client(
                env_policy(HTTP_PROXY=auth_proxy.url(), HTTPS_PROXY=auth_proxy.url()),
                cafile=certificate[0],
            )
            wrong = auth_proxy.url(CREDENTIALS.replace("pass", "nope"))
            mistaken = client(env_policy(HTTPS_PROXY=wrong), cafile=certificate[0])
            good = auth_proxy.url(CREDENTIALS)
            signed = client(env_policy(HTTP_PROXY=good, HTTPS_PROXY=good), cafile=certificate[0])
            try:
                expected = r"other credentials \(HTTP 407\)"
                with pytest.raises(ConnectFailed, match=expected) as refused:
                    await get(anonymous, https_url)
                assert (await get(anonymous, http_url))[0] == 407
                with pytest.raises(ConnectFailed, match="other credentials") as refused_wrong:
                    await get(mistaken, https_url)
                assert await get(signed, https_url) == (200, b"hello")
                assert await get(signed, http_url) == (200, b"hello")
            finally:
                for http in (anonymous, mistaken, signed):
                    await http.close()
    for message in (str(refused.value), str(refused_wrong.value), repr(signed._proxies)):
        assert "S3CRET" not in message and "klawd:" not in message
    assert b"Proxy-Authorization" not in plain_upstream.heads[0], "the proxy consumed it"


async def test_no_proxy_sends_matching_hosts_direct() -> None:
    dead_proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with running_timeout(BOUND_S), origin() as upstream:
        url = f"http://127.0.0.1:{upstream.port}/"
        through = client(env_policy(http_proxy=dead_proxy))
        bypass = client(env_policy(http_proxy=dead_proxy, no_proxy="example.com, 127.0.0.0/8"))
        try:
            with pytest.raises(ConnectFailed, match=r"through proxy 127\.0\.0\.1"):
                await get(through, url)
            assert await get(bypass, url) == (200, b"hello")
        finally:
            await through.close()
            await bypass.close()


async def test_a_proxy_that_is_down_is_a_connect_failure_naming_it(
    certificate: tuple[Path, Path],
) -> None:
    dead_proxy = f"http://user:hunter2@127.0.0.1:{free_port()}"
    http = client(env_policy(HTTPS_PROXY=dead_proxy), cafile=certificate[0])
    try:
        async with running_timeout(BOUND_S):
            with pytest.raises(ConnectFailed) as caught:
                await get(http, "https://localhost:9/")
    finally:
        await http.close()
    assert "localhost:9 through proxy 127.0.0.1:" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_connections_are_pooled_per_proxy() -> None:
    url = "https://api.example.com/v1/chat/completions"
    direct = _parse_target(url, None)
    via_a = _parse_target(url, env_policy(HTTPS_PROXY="http://a.internal:3128"))
    via_b = _parse_target(url, env_policy(HTTPS_PROXY="http://b.internal:3128"))
    assert len({direct.key, via_a.key, via_b.key}) == 3
    assert via_a.tunnel == (
        b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n"
    )
    assert (via_a.host, via_a.port, via_a.origin) == ("a.internal", 3128, "api.example.com")
    plain = _parse_target("http://api.example.com/v1/x", env_policy(HTTP_PROXY="u:p@a.internal"))
    assert plain.line_rest.startswith(" http://api.example.com/v1/x HTTP/1.1\r\n")
    assert "Proxy-Authorization: Basic dTpw\r\n" in plain.line_rest
