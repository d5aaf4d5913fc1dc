"""Shared fixtures: free ports, the fake upstreams, and the gateway as a real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpcore
import httpcore2
import httpx
import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.azure_upstream import FakeAzure
from tests.fakes.bedrock_upstream import FakeBedrock
from tests.fakes.cloud_config import SECRETS as CLOUD_SECRETS
from tests.fakes.cloud_config import cloud_config, cloud_env
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.provider_config import PROVIDER_ENV, provider_config
from tests.fakes.replicate_upstream import FakeReplicate
from tests.fakes.vertex_upstream import FakeVertex
from tests.live_bound import polls, running_time_reads, running_time_reads_async, wait_exit
from tests.redis_server import RedisClusterServers, RedisServer, cluster_ports

REPO = Path(__file__).resolve().parent.parent
KLAWD = str(Path(sys.executable).parent / "klawd")
ADMIN_TOKEN = "test-admin-token-0123456789"
UPSTREAM_KEY = "sk-upstream-SECRET-do-not-leak-42"

pytest_plugins = [
    "tests.running_timeout",  # the per-test timeout in running time
    "tests.asked_again",  # a failure in a stopped run asked again, where a case is marked so
]


@pytest.fixture(scope="session", autouse=True)
def client_reads_count_running_time() -> Iterator[None]:
    """Every httpx client's and official SDK's read timeout (`timeout=20`: a hang guard)
    counted in this process's running time (tests/live_bound.running_time_reads), sync or
    async."""
    with pytest.MonkeyPatch.context() as patch:
        for library in (httpcore, httpcore2):  # httpx's, and the SDKs' httpx2's
            stream = library._backends.sync.SyncStream
            patch.setattr(stream, "read", running_time_reads(stream.read, library.ReadTimeout))
            aio = library._backends.anyio.AnyIOStream
            patch.setattr(aio, "read", running_time_reads_async(aio.read, library.ReadTimeout))
        yield


@pytest.fixture(autouse=True)
def close_sdk_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every official-SDK client a test makes is closed when the test ends.

    An unclosed client's pooled socket is otherwise closed by the garbage collector in whatever
    test happens to run then, where `filterwarnings = error` turns its ResourceWarning into a
    failure of an unrelated test.
    """
    made: list[openai.OpenAI | anthropic.Anthropic] = []
    for sdk_class in (openai.OpenAI, anthropic.Anthropic):
        original = sdk_class.__init__

        def recording_init(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> None:
            _original(self, *args, **kwargs)
            made.append(self)

        monkeypatch.setattr(sdk_class, "__init__", recording_init)
    yield
    for sdk_client in made:
        sdk_client.close()


@pytest.fixture(scope="session", autouse=True)
def sdk_clients_cut_while_made_are_not_finalized() -> Iterator[None]:
    """The anthropic SDK's HTTP client builds its transports (loading the CA bundle) before
    httpx's `__init__` gives it any state. Cut there (a test's timeout fired), it is collected
    later, in whatever test runs then, and its `__del__` raised AttributeError, which
    `filterwarnings = error` made that test's failure (tests/unit/test_sdk_client_cut.py).
    Made only in part it has nothing open: its `__del__` is skipped."""

    def finalized_if_made(finalize: Any) -> Any:
        def finalize_made(client: Any) -> None:
            if "_state" in vars(client):  # (httpx2.Client's `__init__` ran)
                finalize(client)

        return finalize_made

    with pytest.MonkeyPatch.context() as patch:
        for wrapper in (
            anthropic._base_client.SyncHttpxClientWrapper,
            anthropic._base_client.AsyncHttpxClientWrapper,
        ):
            patch.setattr(wrapper, "__del__", finalized_if_made(wrapper.__del__))
        yield


# The scopes of the fixtures being set up now, innermost last (FixtureScopes), and the gateways
# started by the running test or its function-scoped fixtures (kill_test_gateways).
_fixture_scopes: list[str] = []
_test_gateways: list[subprocess.Popen[bytes]] = []


class FixtureScopes:
    """Keeps `_fixture_scopes`. A plugin of its own, not this conftest's hook: pytest asks a
    session-scoped fixture's setup hook of the session, which a conftest's hooks do not see."""

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any]) -> Iterator[Any]:
        _fixture_scopes.append(fixturedef.scope)
        try:
            return (yield)
        finally:
            _fixture_scopes.pop()


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(FixtureScopes(), "klawd-fixture-scopes")


@pytest.fixture(autouse=True)
def kill_test_gateways() -> Iterator[None]:
    """A gateway that a test (or its function-scoped fixture) started is stopped when it ends.

    A test that fails before its own stop would otherwise leave its `klawd serve` running for the
    rest of the session. This autouse fixture is set up before the test's other function-scoped
    fixtures, so it is torn down after them: what they stop is already gone. Gateways of module-
    or session-scoped fixtures are not the test's and are left to their fixtures.
    """
    yield
    for process in _test_gateways:
        if process.poll() is None:
            stop(process)
    _test_gateways.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_healthy(
    base_url: str, process: subprocess.Popen[bytes], timeout_s: float = 30
) -> None:
    for _ in polls(timeout_s, 0.1):  # running time: a start across a stop of the machine
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
    raise RuntimeError("gateway did not become healthy")


@dataclass
class Gateway:
    base_url: str
    config: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        )

    def post(
        self,
        key: str,
        body: dict[str, Any],
        route: str = "/v1/chat/completions",
        timeout: float = 10,
    ) -> httpx.Response:
        """`body` posted to `route` with the API key, as a client would."""
        return httpx.post(
            f"{self.base_url}{route}",
            json=body,
            headers={"authorization": f"Bearer {key}"},
            timeout=timeout,
        )

    def new_key(
        self,
        plan: str = "enterprise",
        credits_usd: float = 100.0,
        limits: dict[str, int] | None = None,
    ) -> str:
        """A new account's key; `limits`: per-account overrides of the plan's limits."""
        with self.admin() as admin:
            account = admin.post(
                "/admin/accounts", json={"name": "test", "plan": plan, "credits_usd": credits_usd}
            )
            assert account.status_code == 201, account.text
            if limits is not None:
                patched = admin.patch(
                    f"/admin/accounts/{account.json()['id']}", json={"limits": limits}
                )
                assert patched.status_code == 200, patched.text
            key = admin.post(f"/admin/accounts/{account.json()['id']}/keys", json={})
            assert key.status_code == 201, key.text
            value: str = key.json()["key"]
            return value


TEST_MODELS = [
    "gpt-fake",
    "tools-fake",
    "pause-fake",
    "done-stall-fake",
    "cut-fake",
    "error-event",
    "fail-401",
    "fail-429",
    "fail-500",
    "fail-400",
    "garbage",
    "flaky",
    "hold-fake",
    "flood-fake",
    "big-answer-fake",
    "length-fake",
    "filter-fake",
    "parallel-fake",
    "stop-seq-fake",
    "cached-fake",
]


def gateway_config(
    path: Path, port: int, upstream_url: str, extra: str = "", store_url: str | None = None
) -> None:
    models = "\n".join(
        f'[[models]]\nid = "openai/{name}"\nprovider = "openai"\nupstream_model = "{name}"\n'
        f"context_length = 8192\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n"
        f'capabilities = ["tools"]\n'
        for name in TEST_MODELS
    )
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}

[server.streams]
keepalive_s = 1

[retry]
attempts = 3
base_delay_s = 0.01
max_delay_s = 0.05
max_retry_after_s = 5

[store]
url = "{store_url or f"sqlite:///{path.parent / 'klawd.db'}"}"

[providers.openai]
base_url = "{upstream_url}"

# a second test of the 429 (the first rests the deployment until its Retry-After)
[[models]]
id = "openai/fail-429~again"
provider = "openai"
upstream_model = "fail-429"

# the circuit tests' own failing models: `openai/fail-500`'s circuit is opened by tests all over
# the session, and one opened ~cooldown_s before a circuit test turns half-open under it
[[models]]
id = "openai/fail-500~status"
provider = "openai"
upstream_model = "fail-500"

[[models]]
id = "openai/fail-500~open"
provider = "openai"
upstream_model = "fail-500"

# streams the upstream cuts (for the circuit that counts them), then a model that serves
[[models]]
id = "openai/cut-then-fallback"
provider = "openai"
upstream_model = "cut-fake"
fallbacks = ["openai/gpt-fake"]

# streams the upstream ends with an error event (its server failing mid-stream), then a
# model that serves
[[models]]
id = "openai/error-then-fallback"
provider = "openai"
upstream_model = "error-event"
fallbacks = ["openai/gpt-fake"]

[[models]]
id = "openai/fallback-chain"
provider = "openai"
upstream_model = "fail-500"
fallbacks = ["openai/gpt-fake"]

# the same fake upstream behind short timeouts and no retries
[providers.slowai]
kind = "openai"
base_url = "{upstream_url}"
api_key_env = "OPENAI_API_KEY"
first_byte_timeout_s = 1
stream_idle_timeout_s = 1
timeout_s = 3
retry = {{ attempts = 1 }}

[[models]]
id = "slowai/hang-headers"
provider = "slowai"

[[models]]
id = "slowai/stall-stream"
provider = "slowai"

[[models]]
id = "slowai/trickle"
provider = "slowai"

# nothing listens on port 9 (discard) on loopback: every connect is refused
[providers.deadai]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "OPENAI_API_KEY"

[[models]]
id = "deadai/refused"
provider = "deadai"

{models}
{extra}
"""
    )


def children(pid: int) -> list[int]:
    """The process's child processes (Granian's workers of `klawd serve`)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def start_gateway(
    config: Path, port: int, env_extra: dict[str, str] | None = None, workers: int = 1
) -> Gateway:
    env = {
        **os.environ,
        "KLAWD_ADMIN_TOKEN": ADMIN_TOKEN,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        # `klawd serve`'s temporary directories (drain, metrics) in the test's own directory:
        # a test that kills its gateway leaves them there, not in /tmp.
        "TMPDIR": str(config.parent),
        **(env_extra or {}),
    }
    with (config.parent / "gateway.log").open("ab") as log:
        process = subprocess.Popen(
            [KLAWD, "serve", "--config", str(config), "--port", str(port)]
            + (["--workers", str(workers)] if workers > 1 else []),
            cwd=config.parent,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if not _fixture_scopes or _fixture_scopes[-1] == "function":
        _test_gateways.append(process)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base_url, process)
    except RuntimeError:
        process.kill()
        raise
    return Gateway(base_url, config, env, process)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        wait_exit(process, 15)
    except subprocess.TimeoutExpired:
        process.kill()
        wait_exit(process, 5)


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def fake_anthropic() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def fake_gemini() -> Iterator[FakeGemini]:
    fake = FakeGemini()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def fake_replicate() -> Iterator[FakeReplicate]:
    fake = FakeReplicate()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def gateway(
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
    fake_replicate: FakeReplicate,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("gateway")
    port = free_port()
    config = directory / "klawd.toml"
    providers = provider_config(
        fake_anthropic.base_url, fake_gemini.base_url, fake_replicate.base_url
    )
    gateway_config(config, port, fake_openai.base_url, extra=providers)
    running = start_gateway(config, port, PROVIDER_ENV)
    yield running
    stop(running.process)
    log_text = (directory / "gateway.log").read_text(errors="replace")
    assert UPSTREAM_KEY not in log_text, "the upstream key leaked into the gateway's log"
    for secret in PROVIDER_ENV.values():
        assert secret not in log_text, "a provider key leaked into the gateway's log"


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def gateway_on_each_store(
    request: pytest.FixtureRequest,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
    fake_replicate: FakeReplicate,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """The session's gateway (embedded store), then one like it on the suite's Redis."""
    if request.param == "sqlite":
        yield request.getfixturevalue("gateway")
        return
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    directory = tmp_path_factory.mktemp("gateway-redis")
    port = free_port()
    config = directory / "klawd.toml"
    providers = provider_config(
        fake_anthropic.base_url, fake_gemini.base_url, fake_replicate.base_url
    )
    gateway_config(config, port, fake_openai.base_url, extra=providers, store_url=redis_server.url)
    running = start_gateway(config, port, PROVIDER_ENV)
    yield running
    stop(running.process)


@pytest.fixture
def api_key(gateway: Gateway) -> str:
    return gateway.new_key()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


# A redis-server's data that survives its restart (`redis_alone`: accounts, keys, buckets)
PERSISTED = ("--appendonly", "yes", "--appendfsync", "always")


@pytest.fixture
def redis_alone(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server a test may stop and start again (not the suite's), its data persisted."""
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start(*PERSISTED)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(cluster_ports(3), tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def fake_azure() -> Iterator[FakeAzure]:
    fake = FakeAzure()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def fake_bedrock() -> Iterator[FakeBedrock]:
    fake = FakeBedrock()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def fake_vertex() -> Iterator[FakeVertex]:
    fake = FakeVertex()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def cloud_gateway(
    fake_openai: FakeOpenAI,
    fake_azure: FakeAzure,
    fake_bedrock: FakeBedrock,
    fake_vertex: FakeVertex,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """A gateway whose providers are the cloud fakes (tests/fakes/cloud_config.py)."""
    directory = tmp_path_factory.mktemp("cloud-gateway")
    port = free_port()
    config = directory / "klawd.toml"
    extra = cloud_config(fake_azure.origin, fake_bedrock.origin, fake_vertex.origin)
    gateway_config(config, port, fake_openai.base_url, extra=extra)
    running = start_gateway(config, port, cloud_env(fake_vertex, directory))
    yield running
    stop(running.process)
    log_text = (directory / "gateway.log").read_text(errors="replace")
    for secret in CLOUD_SECRETS:
        assert secret not in log_text, "a cloud secret leaked into the gateway's log"
