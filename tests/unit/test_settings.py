"""klawd.toml: defaults, merging over the built-ins, and one clear line for every bad file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gateway.settings import ConfigError, ProviderSettings, load_settings
from tests.conftest import KLAWD


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "klawd.toml"
    path.write_text(text)
    return path


def test_no_file_gives_the_documented_defaults() -> None:
    settings = load_settings(None)
    assert settings.server.host == "127.0.0.1" and settings.server.port == 8080
    assert settings.server.streams.keepalive_s == 15
    assert settings.store.url == "sqlite:///./data/klawd.db"
    assert settings.retry.attempts == 3 and settings.retry.max_retry_after_s == 30
    assert settings.plans["free"].requests_per_day == 100
    assert settings.plans["free"].starting_credit_usd == 5.0
    assert settings.plans["pro"].images is True
    assert settings.providers["google"].kind == "gemini"
    assert {m.id for m in settings.models} >= {
        "anthropic/claude-opus-4",
        "anthropic/claude-sonnet-4",
        "openai/gpt-4-turbo",
        "google/gemini-2.0-flash",
        "replicate/seedream-4.5",
        "klawd/echo",
    }
    assert settings.routes["klawd/standard"].targets == [
        "anthropic/claude-sonnet-4",
        "openai/gpt-4-turbo",
    ]


def test_the_design_example_file_loads(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "klawd.example.toml"
    settings = load_settings(example)
    assert settings.providers["local"].base_url == "http://127.0.0.1:8000/v1"
    local = {m.id: m for m in settings.models}["local/llama-3.1-8b"]
    assert local.upstream_model == "meta-llama/Llama-3.1-8B-Instruct"


def test_a_table_overrides_a_builtin_field_by_field(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            '[providers.openai]\nbase_url = "http://127.0.0.1:9/v1"\n'
            "[plans.free]\nrequests_per_day = 7\n",
        )
    )
    assert settings.providers["openai"].base_url == "http://127.0.0.1:9/v1"
    assert settings.providers["openai"].api_key_env == "OPENAI_API_KEY"
    assert settings.plans["free"].requests_per_day == 7
    assert settings.plans["free"].requests_per_minute == 10


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[server]\nprot = 1\n", "prot"),
        ("[server]\nport = 'eighty'\n", "server.port"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[retry]\nattempts = 0\n", "retry.attempts"),
        ('[providers.x]\nkind = "carrier-pigeon"\nbase_url = "http://a"\n', "providers.x.kind"),
        ('[[models]]\nid = "a/b"\nprovider = "nowhere"\n', "provider"),
        ('[routes."klawd/x"]\ntargets = ["no/such"]\n', "no/such"),
        ('[store]\nurl = "postgres://x"\n', "store.url"),
        ("[server]\nworkers = 4\n", "workers"),
        ("[server\n", "TOML"),
    ],
)
def test_bad_files_fail_with_one_line_naming_the_field(
    tmp_path: Path, text: str, names: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))
    message = str(caught.value)
    assert names in message
    assert "\n" not in message.strip()


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")


def test_cli_refuses_a_bad_file_with_nonzero_exit(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nprot = 1\n")
    result = subprocess.run(
        [KLAWD, "serve", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "prot" in result.stderr
    assert result.stderr.count("\n") == 1


def test_cli_help_lists_every_command() -> None:
    result = subprocess.run([KLAWD, "--help"], capture_output=True, text=True, timeout=30)
    for command in ("serve", "config", "accounts", "keys"):
        assert command in result.stdout


def test_store_url_can_come_from_an_environment_variable(tmp_path: Path) -> None:
    path = write(tmp_path, '[store]\nurl_env = "KLAWD_STORE_URL"\n[server]\nworkers = 2\n')
    secret_url = "redis://:s3cret@redis.internal:6379/0"
    settings = load_settings(path, {"KLAWD_STORE_URL": secret_url})
    assert settings.store.url == secret_url
    assert settings.store.display_url() == "redis://redis.internal:6379/0"
    with pytest.raises(ConfigError, match="workers"):
        load_settings(path, {})  # unset: the sqlite default, which cannot serve 2 workers


@pytest.mark.parametrize(
    ("fields", "streamed", "bound"),
    [
        ({}, False, 60.0),  # unset: first_byte_timeout_s bounds a non-streamed answer too
        ({}, True, 60.0),
        ({"answer_timeout_s": 300}, False, 300.0),
        ({"answer_timeout_s": 300}, True, 60.0),  # a stream's first byte keeps its own bound
        ({"answer_timeout_s": 900}, False, 600.0),  # never longer than the whole call
        ({"first_byte_timeout_s": 700}, True, 600.0),
    ],
)
def test_the_headers_timeout_of_a_call(
    fields: dict[str, float], streamed: bool, bound: float
) -> None:
    settings = ProviderSettings(kind="openai", **fields)  # type: ignore[arg-type]
    assert settings.headers_timeout_s(streamed) == bound
