"""Which proxy a provider request goes through: the environment as curl and requests read it,
NO_PROXY matching, a provider's own proxy_url, and start-up errors that never quote a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.providers.proxy import NoProxy, parse_proxy_url, proxy_policy
from gateway.settings import ConfigError, load_settings


def chosen(environ: dict[str, str], url: tuple[str, str, int], proxy_url: str = "") -> str | None:
    proxy = proxy_policy(proxy_url, "", environ).choose(*url)
    return None if proxy is None else proxy.display


HTTPS = ("https", "api.openai.com", 443)
HTTP = ("http", "vllm.internal", 8000)


@pytest.mark.parametrize(
    ("environ", "url", "expected"),
    [
        ({}, HTTPS, None),
        ({"HTTPS_PROXY": "http://p:3128"}, HTTPS, "p:3128"),
        ({"HTTPS_PROXY": "http://p:3128"}, HTTP, None),
        ({"HTTP_PROXY": "http://p:3128"}, HTTP, "p:3128"),
        ({"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}, HTTPS, "lower:1"),
        ({"https_proxy": "", "HTTPS_PROXY": "http://upper:2"}, HTTPS, "upper:2"),
        ({"ALL_PROXY": "http://all:3"}, HTTPS, "all:3"),
        ({"all_proxy": "http://all:3", "HTTPS_PROXY": "http://p:1"}, HTTPS, "p:1"),
        ({"HTTPS_PROXY": "p.corp:8080"}, HTTPS, "p.corp:8080"),  # no scheme: http://
        ({"HTTPS_PROXY": "http://p"}, HTTPS, "p:80"),
        ({"HTTPS_PROXY": "http://[fd00::1]:3128"}, HTTPS, "[fd00::1]:3128"),
    ],
)
def test_the_environment_picks_the_proxy_by_scheme(
    environ: dict[str, str], url: tuple[str, str, int], expected: str | None
) -> None:
    assert chosen(environ, url) == expected


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypassed"),
    [
        ("*", "anything.example", 443, True),
        ("example.com", "example.com", 443, True),
        ("example.com", "api.example.com", 443, True),
        (".example.com", "api.example.com", 443, True),
        (".example.com", "example.com", 443, True),
        ("*.example.com", "api.example.com", 443, True),
        ("example.com", "notexample.com", 443, False),
        ("example.com", "example.com.evil.net", 443, False),
        ("EXAMPLE.com.", "Api.Example.COM", 443, True),
        ("example.com:8443", "example.com", 8443, True),
        ("example.com:8443", "example.com", 443, False),
        ("localhost, 127.0.0.1", "127.0.0.1", 80, True),
        ("10.0.0.0/8", "10.1.2.3", 443, True),
        ("10.0.0.0/8", "11.0.0.1", 443, False),
        ("10.0.0.0/8", "ten.internal", 443, False),  # names are not resolved
        ("fd00::/8", "fd00::5", 443, True),
        ("[::1]", "::1", 443, True),
        ("[::1]:8080", "::1", 443, True),  # an address with a port: the address counts
        ("a.com b.com,,c.com", "b.com", 443, True),
        ("", "example.com", 443, False),
    ],
)
def test_no_proxy_matches_like_curl_and_requests(
    no_proxy: str, host: str, port: int, bypassed: bool
) -> None:
    assert NoProxy(no_proxy).matches(host, port) is bypassed
    environ = {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": no_proxy}
    assert (chosen(environ, ("https", host, port)) is None) is bypassed


def test_lowercase_no_proxy_wins() -> None:
    environ = {"HTTPS_PROXY": "http://p:1", "no_proxy": "a.com", "NO_PROXY": "api.openai.com"}
    assert chosen(environ, HTTPS) == "p:1"


def test_a_provider_proxy_url_overrides_the_environment() -> None:
    environ = {"HTTPS_PROXY": "http://env:1", "NO_PROXY": "*"}
    assert chosen(environ, HTTPS, proxy_url="http://mine:2") == "mine:2"
    assert chosen(environ, HTTP, proxy_url="http://mine:2") == "mine:2"
    assert chosen({"HTTPS_PROXY": "http://env:1"}, HTTPS, proxy_url="none") is None
    from_env = proxy_policy("http://ignored:9", "MY_PROXY", {"MY_PROXY": "http://u:p@v:3"})
    proxy = from_env.choose(*HTTPS)
    assert proxy is not None and proxy.display == "v:3"
    assert proxy.authorization == "Basic dTpw"
    fallback = proxy_policy("http://used:9", "MY_PROXY", {}).choose(*HTTPS)
    assert fallback is not None and fallback.display == "used:9"


def test_credentials_become_basic_authorization_and_never_print() -> None:
    proxy = parse_proxy_url("http://us%40er:p%3Ass@p:3128", "HTTPS_PROXY")
    assert proxy.authorization == "Basic dXNAZXI6cDpzcw=="  # base64("us@er:p:ss")
    assert "p:ss" not in repr(proxy) and "us@er" not in repr(proxy)
    policy = proxy_policy("", "", {"HTTPS_PROXY": "http://user:hunter2@p:3128"})
    assert "hunter2" not in repr(policy)


@pytest.mark.parametrize(
    "url", ["https://user:hunter2@p:3128", "socks5://user:hunter2@p:1080", "http://:3128"]
)
def test_unusable_proxy_urls_are_refused_without_quoting_them(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        proxy_policy("", "", {"HTTPS_PROXY": url})
    assert "HTTPS_PROXY" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_start_up_refuses_credentials_in_the_file_and_bad_environment(tmp_path: Path) -> None:
    config = tmp_path / "klawd.toml"
    config.write_text('[providers.openai]\nproxy_url = "http://user:hunter2@p:3128"\n')
    with pytest.raises(ConfigError, match="proxy_url_env") as in_file:
        load_settings(config, {})
    assert "hunter2" not in str(in_file.value)
    config.write_text('[providers.openai]\nproxy_url = "socks5://p:1080"\n')
    with pytest.raises(ConfigError, match=r"providers\.openai"):
        load_settings(config, {})
    with pytest.raises(ConfigError, match="https_proxy") as in_env:
        load_settings(None, {"https_proxy": "https://user:hunter2@p:3128"})
    assert "hunter2" not in str(in_env.value)
    config.write_text('[providers.openai]\nproxy_url = "none"\n')
    assert load_settings(config, {}).providers["openai"].proxy_url == "none"
