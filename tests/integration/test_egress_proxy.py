"""The gateway behind a company egress proxy: a real tinyproxy with credentials on loopback, the
gateway process configured only through HTTPS_PROXY / HTTP_PROXY (and one provider's
`proxy_url = "none"`), the official openai SDK as the client, and the fake OpenAI upstream over
TLS (a test certificate trusted through SSL_CERT_FILE) and over plain http."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import ANSWER_WORDS, FakeOpenAI
from tests.proxy_server import Tinyproxy, make_certificate

CREDENTIALS = "egress:tunnel-S3CRET-42"
ANSWER = "".join(ANSWER_WORDS)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("egress-tls"))


@pytest.fixture(scope="module")
def tls_upstream(certificate: tuple[Path, Path]) -> Iterator[FakeOpenAI]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    fake = FakeOpenAI(tls=context)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tinyproxy]:
    server = Tinyproxy(tmp_path_factory.mktemp("egress-proxy"), CREDENTIALS)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxied_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    certificate: tuple[Path, Path],
    tls_upstream: FakeOpenAI,
    fake_openai: FakeOpenAI,
    proxy: Tinyproxy,
) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("egress-gateway")
    port = free_port()
    config = directory / "klawd.toml"
    extra = f"""
[providers.plainai]
kind = "openai"
base_url = "{fake_openai.base_url}"
api_key_env = "OPENAI_API_KEY"

[[models]]
id = "plainai/gpt-fake"
provider = "plainai"
upstream_model = "gpt-fake"

[providers.directai]
kind = "openai"
base_url = "{fake_openai.base_url}"
api_key_env = "OPENAI_API_KEY"
proxy_url = "none"

[[models]]
id = "directai/gpt-fake"
provider = "directai"
upstream_model = "gpt-fake"

[providers.wrongauth]
kind = "openai"
base_url = "{tls_upstream.base_url}"
api_key_env = "OPENAI_API_KEY"
proxy_url_env = "WRONG_PROXY_URL"
retry = {{ attempts = 1 }}

[[models]]
id = "wrongauth/gpt-fake"
provider = "wrongauth"
upstream_model = "gpt-fake"
"""
    gateway_config(config, port, tls_upstream.base_url, extra=extra)
    environment = {
        "HTTPS_PROXY": proxy.url(CREDENTIALS),
        "HTTP_PROXY": proxy.url(CREDENTIALS),
        "NO_PROXY": "",
        "no_proxy": "",
        "SSL_CERT_FILE": str(certificate[0]),  # the gateway trusts the test CA for upstreams
        "WRONG_PROXY_URL": proxy.url("egress:wrong-S3CRET-7"),
    }
    running = start_gateway(config, port, environment)
    yield running
    stop(running.process)
    log_text = (directory / "gateway.log").read_text(errors="replace")
    assert "S3CRET" not in log_text, "a proxy password leaked into the gateway's log"
    assert "egress:" not in log_text, "a proxy user name leaked into the gateway's log"


def sdk(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=gateway.new_key(), max_retries=0, timeout=30
    )


def test_https_providers_are_reached_through_a_connect_tunnel(
    proxied_gateway: Gateway, proxy: Tinyproxy, tls_upstream: FakeOpenAI
) -> None:
    client = sdk(proxied_gateway)
    completion = client.chat.completions.create(
        model="openai/gpt-fake", messages=[{"role": "user", "content": "through the tunnel"}]
    )
    assert completion.choices[0].message.content == ANSWER
    chunks = client.chat.completions.create(
        model="openai/gpt-fake",
        messages=[{"role": "user", "content": "streamed through the tunnel"}],
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert f"CONNECT localhost:{tls_upstream.port}" in proxy.log()
    received = tls_upstream.last_request("gpt-fake")
    assert "Via" not in received["headers"], "TLS end to end: the proxy only saw CONNECT"
    assert "Proxy-Authorization" not in received["headers"]


def test_plain_http_providers_go_through_the_proxy_and_none_goes_direct(
    proxied_gateway: Gateway, proxy: Tinyproxy, fake_openai: FakeOpenAI
) -> None:
    client = sdk(proxied_gateway)
    proxied = client.chat.completions.create(
        model="plainai/gpt-fake", messages=[{"role": "user", "content": "via the proxy"}]
    )
    assert proxied.choices[0].message.content == ANSWER
    through = fake_openai.last_request("gpt-fake")
    assert "tinyproxy" in through["headers"].get("Via", "")
    assert "Proxy-Authorization" not in through["headers"], "the proxy consumed the credentials"
    assert f"POST http://127.0.0.1:{fake_openai.port}/v1/chat/completions" in proxy.log()

    direct = client.chat.completions.create(
        model="directai/gpt-fake", messages=[{"role": "user", "content": "direct"}]
    )
    assert direct.choices[0].message.content == ANSWER
    assert "Via" not in fake_openai.last_request("gpt-fake")["headers"]


def test_a_proxy_refusing_the_credentials_is_a_503_and_a_log_line_without_them(
    proxied_gateway: Gateway, tls_upstream: FakeOpenAI
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(proxied_gateway).chat.completions.create(
            model="wrongauth/gpt-fake", messages=[{"role": "user", "content": "refused"}]
        )
    assert caught.value.status_code == 503
    assert "unreachable" in caught.value.message
    assert "S3CRET" not in str(caught.value.body)
    log_text = (proxied_gateway.config.parent / "gateway.log").read_text(errors="replace")
    assert (
        f"provider wrongauth unreachable: could not connect to localhost:{tls_upstream.port} "
        "through proxy 127.0.0.1:"
    ) in log_text
    assert "the proxy wants other credentials (HTTP 401)" in log_text
