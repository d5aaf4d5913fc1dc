"""`klawd.toml`: typed settings with a default for every field, loaded by one pure function.

The file's shape is a public contract (DESIGN "Configuration"). The built-in plans, providers,
models and routes are merged *under* the file: a table in the file overrides the built-in entry of
the same name field by field, and new names add entries. Unknown keys are an error that names them.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from gateway.catalog_defaults import BUILTIN
from gateway.providers.proxy import proxy_policy

PositiveInt = Annotated[int, Meta(ge=1)]
NonNegFloat = Annotated[float, Meta(ge=0)]
NonNegInt = Annotated[int, Meta(ge=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
Port = Annotated[int, Meta(ge=1, le=65535)]

ProviderKind = Literal[
    "openai", "anthropic", "gemini", "replicate", "azure", "bedrock", "vertex", "echo"
]
ModelKind = Literal["chat", "image", "embedding"]
Capability = Literal["tools", "vision", "json", "images"]


# The fields a cloud kind cannot do without, and its endpoint when `base_url` is not given.
CLOUD_REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "bedrock": ("region",),
    "vertex": ("project", "location"),
}
CLOUD_BASE_URLS: dict[str, str] = {
    "bedrock": "https://bedrock-runtime.{region}.amazonaws.com",
    "vertex": "https://{location}-aiplatform.googleapis.com",
}


class ConfigError(Exception):
    """A configuration that cannot be used: the message is one line naming the field and why."""


class _Strict(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class StreamsSettings(_Strict):
    keepalive_s: PositiveFloat = 15.0
    drain_grace_s: NonNegFloat = 30.0
    # A stream whose client has taken nothing for this long (it stopped reading: its socket's
    # buffers are full) is ended as if the client had left, and its upstream let go (nginx's
    # send_timeout). Checked at the keepalive checks: ended within `keepalive_s` after it.
    send_timeout_s: PositiveFloat = 60.0


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: Port = 8080
    workers: PositiveInt = 1
    max_body_bytes: PositiveInt = 10 * 1024 * 1024
    # A request whose body stops arriving for this long gets 408 `request_timeout` and its
    # connection closed (nginx's client_body_timeout: the silence between two reads, not the
    # whole upload). Until then it holds one of `max_in_flight`'s places.
    body_idle_timeout_s: PositiveFloat = 60.0
    admin_token_env: str = "KLAWD_ADMIN_TOKEN"  # noqa: S105 (the variable's name, not a token)
    # Serve /metrics on this port (same host) instead of the main one; unset: the main port.
    metrics_port: Port | None = None
    # Debugging only: put the API routes' request and answer bodies (prompts, completions) into
    # the request log, each cut after this many bytes; 0 (the default) logs no body.
    log_bodies_bytes: NonNegInt = 0
    # Connections one worker serves at once (Granian's backpressure counts connections: requests
    # in flight, open streams, and idle keep-alive connections until the 10 s header read
    # timeout closes them); the next connections wait in the listen backlog. Sized for
    # long-lived streams: each open stream holds memory in the worker (docs/configuration.md
    # gives the measured figure) and two file descriptors.
    max_in_flight: PositiveInt = 12_288
    # Connections the kernel queues before the worker accepts them (capped by
    # net.core.somaxconn): a flood waits here, costing kernel memory only.
    listen_backlog: PositiveInt = 4096
    # Request headers larger than this are refused with 431. It is also the most Granian
    # buffers per connection: at 8 KiB (its minimum) an open stream costs about 10 KB less
    # of the worker's memory than at 64 KiB (docs/decisions/0012).
    max_header_bytes: Annotated[int, Meta(ge=8192, le=1048576)] = 8192
    streams: StreamsSettings = msgspec.field(default_factory=StreamsSettings)


class StoreSettings(_Strict):
    url: str = "sqlite:///./data/klawd.db"
    # The name of an environment variable that, when set, holds the URL instead (for a Redis
    # URL with a password: secrets only by environment variable name).
    url_env: str = ""
    # Redis: how long an admitted request's credit reservation is held at most. A request never
    # settled (its worker killed, its admission's reply lost) has it given back after this,
    # at the account's next admission; one still running then keeps running, and is settled
    # by its cost alone. Longer than any request (or stream) should last.
    reservation_hold_s: PositiveFloat = 3600.0

    def display_url(self) -> str:
        """The URL without credentials, for logs and banners."""
        scheme, sep, rest = self.url.partition("://")
        return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else self.url


class RetrySettings(_Strict):
    attempts: PositiveInt = 3
    base_delay_s: NonNegFloat = 0.25
    max_delay_s: NonNegFloat = 8.0
    max_retry_after_s: NonNegFloat = 30.0
    # A poll of a job the upstream runs (Replicate's predictions: a GET, idempotent) that failed
    # transiently is polled again up to this many times in a row; 0: never (the job cancelled).
    # Not `attempts`: a poll is no try of the request (nothing is generated again).
    poll_retries: NonNegInt = 3
    # `[retry]` only (refused in `[providers.X.retry]`: load_settings): the longest a request
    # may spend before its first byte, over every try, wait and fallback, given to the retrier
    # (gateway/state.py, gateway/routing/retry.py). Unset: no bound but each try's own.
    deadline_s: PositiveFloat | None = None


class PlanSettings(_Strict):
    requests_per_minute: PositiveInt
    requests_per_day: PositiveInt
    starting_credit_usd: NonNegFloat = 0.0
    images: bool = False
    tokens_per_minute: PositiveInt | None = None


class ProviderSettings(_Strict):
    kind: ProviderKind
    base_url: str = ""
    api_key_env: str = ""
    connect_timeout_s: PositiveFloat = 5.0
    first_byte_timeout_s: PositiveFloat = 60.0
    # Until a non-streamed answer's headers, which come with the whole answer (a long answer, a
    # reasoning model, a large image take longer than a stream's first byte). Unset: the
    # contract's reading, `first_byte_timeout_s` bounds them too. At most `timeout_s`.
    answer_timeout_s: PositiveFloat | None = None
    stream_idle_timeout_s: PositiveFloat = 60.0
    timeout_s: PositiveFloat = 600.0
    pool_size: PositiveInt = 100
    retry: RetrySettings | None = None
    # kind azure: the `api-version` query parameter, and optionally a Microsoft Entra ID bearer
    # token (by env var name) sent instead of the `api-key` header.
    api_version: str = "2024-10-21"
    entra_token_env: str = ""
    # kind bedrock: the SigV4 region and the credentials (by env var name).
    region: str = ""
    access_key_id_env: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"  # noqa: S105 (a variable's name)
    session_token_env: str = "AWS_SESSION_TOKEN"  # noqa: S105 (a variable's name)
    # kind vertex: the project and location in the model URLs, the service-account JSON file
    # (its path by env var name), and how long before its expiry an access token is renewed.
    project: str = ""
    location: str = ""
    credentials_file_env: str = "GOOGLE_APPLICATION_CREDENTIALS"
    token_refresh_margin_s: NonNegFloat = 300.0
    # kind replicate: how long the client's 504 waits for the cancel of a prediction that ran
    # past `timeout_s` (sent before the 504; Replicate answers a cancel at once).
    cancel_timeout_s: PositiveFloat = 5.0
    # This key's own upstream limits (optional): the gateway keeps under them (routing/capacity.py).
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    # Egress proxy (gateway/providers/proxy.py): "" follows HTTPS_PROXY/HTTP_PROXY/NO_PROXY;
    # "none" goes direct; "http://host:port" uses that proxy. Credentials only through
    # `proxy_url_env`, the name of a variable holding the whole URL (it wins when set).
    proxy_url: str = ""
    proxy_url_env: str = ""

    def headers_timeout_s(self, streamed: bool) -> float:
        """How long a call waits for its response headers: a stream's first byte, or a
        non-streamed answer (`answer_timeout_s` when set); never longer than the whole call."""
        bound = self.first_byte_timeout_s
        if not streamed and self.answer_timeout_s is not None:
            bound = self.answer_timeout_s
        # Compared inline: a call of the builtin min() is ~1K instructions (decision 0011).
        return bound if bound < self.timeout_s else self.timeout_s


class DeploymentSettings(_Strict):
    """One deployment of a model: a configured provider and the model's name there."""

    provider: str
    upstream_model: str = ""
    weight: PositiveInt = 1
    priority: NonNegInt = 0  # lower first; a higher tier only when no lower one can serve


class RoutingSettings(_Strict):
    # How a model's deployments share its traffic (gateway/routing/balance.py).
    balance: Literal["weighted", "least-busy", "least-latency"] = "weighted"
    # Rest of a deployment whose circuit opened (an upstream Retry-After wins for a 429).
    cooldown_s: PositiveFloat = 30.0


class ModelSettings(_Strict):
    id: str
    # One deployment (`provider` + `upstream_model`) or several (`deployments`), never both.
    provider: str = ""
    upstream_model: str = ""
    deployments: list[DeploymentSettings] = msgspec.field(default_factory=list)
    kind: ModelKind = "chat"
    context_length: Annotated[int, Meta(ge=0)] = 0
    input_usd_per_mtok: NonNegFloat = 0.0
    output_usd_per_mtok: NonNegFloat = 0.0
    # Prompt tokens read from / written to the upstream's prompt cache; None: the input price.
    cache_read_usd_per_mtok: NonNegFloat | None = None
    cache_write_usd_per_mtok: NonNegFloat | None = None
    usd_per_image: NonNegFloat = 0.0
    # Image models: the most images one request may ask for (`n`); None: the upstream decides.
    max_images_per_request: PositiveInt | None = None
    capabilities: list[Capability] = msgspec.field(default_factory=list)
    fallbacks: list[str] = msgspec.field(default_factory=list)


class RouteSettings(_Strict):
    targets: Annotated[list[str], Meta(min_length=1)]
    # "ordered": try targets in order (fallbacks).
    # "cheapest": the klawd/auto policy (routing/router.py).
    policy: Literal["ordered", "cheapest"] = "ordered"
    # "cheapest" only: requests that use tools, or whose prompt plus output budget exceeds
    # escalate_above_tokens, are served by a model at least as expensive as escalate_to.
    escalate_to: str | None = None
    escalate_above_tokens: PositiveInt | None = None
    escalate_for_tools: bool = False


class WebhookSettings(_Strict):
    allow_private_networks: bool = False
    usage_interval_s: PositiveFloat = 3600.0  # usage.updated period (hourly)
    timeout_s: PositiveFloat = 5.0  # one delivery attempt, connect included
    retry_base_delay_s: PositiveFloat = 10.0  # backoff: base * 2^n with jitter, capped
    retry_max_delay_s: PositiveFloat = 3600.0
    retry_horizon_s: PositiveFloat = 86400.0  # no attempt later than this after the event
    rotation_grace_s: NonNegFloat = 86400.0  # the old secret still signs (…-Previous)
    poll_interval_s: PositiveFloat = 1.0  # how often the scheduler looks for due work
    lease_ttl_s: PositiveFloat = 15.0  # scheduler lease across replicas (Redis)
    max_concurrency: PositiveInt = 8  # deliveries in flight per scheduler


class BoundsSettings(_Strict):
    """Shapes a chat request may have (checked after decoding, before any upstream call)."""

    max_messages: PositiveInt = 10_000
    max_content_parts: PositiveInt = 10_000  # all messages together
    max_tools: PositiveInt = 512
    max_stop_sequences: PositiveInt = 16
    check_context: bool = True  # refuse prompts estimated not to fit the model's context
    context_chars_per_token: PositiveFloat = 4.0  # the estimate's divisor


class MissionControlSettings(_Strict):
    signup: bool = False  # self-service sign-up: a free account with its starting credit
    public_base_url: str = ""  # shown in quick starts; empty: the URL the browser used
    session_ttl_s: PositiveFloat = 7 * 86400.0
    # Mark cookies Secure even on plain http (a TLS proxy in front); always on over https.
    secure_cookies: bool = False


class ResponsesSettings(_Strict):
    """The Responses API (`/v1/responses`): how long stored responses are kept."""

    ttl_s: PositiveInt = 30 * 86400  # a stored response (store: true) expires this long after


class CacheSettings(_Strict):
    """The response cache (gateway/cache/): used only by requests that ask for it."""

    enabled: bool = False
    ttl_s: PositiveFloat = 3600.0
    max_entry_bytes: PositiveInt = 1024 * 1024


class TelemetrySettings(_Strict):
    """OpenTelemetry traces over OTLP/HTTP (gateway/tracing/): on when otlp_endpoint is set."""

    otlp_endpoint: str = ""  # e.g. "http://collector:4318"; spans go to {endpoint}/v1/traces
    service_name: str = "klawd-gateway"
    sample_ratio: Annotated[float, Meta(ge=0, le=1)] = 1.0


class Settings(_Strict):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    retry: RetrySettings = msgspec.field(default_factory=RetrySettings)
    routing: RoutingSettings = msgspec.field(default_factory=RoutingSettings)
    plans: dict[str, PlanSettings] = msgspec.field(default_factory=dict)
    providers: dict[str, ProviderSettings] = msgspec.field(default_factory=dict)
    models: list[ModelSettings] = msgspec.field(default_factory=list)
    routes: dict[str, RouteSettings] = msgspec.field(default_factory=dict)
    webhooks: WebhookSettings = msgspec.field(default_factory=WebhookSettings)
    mission_control: MissionControlSettings = msgspec.field(default_factory=MissionControlSettings)
    responses: ResponsesSettings = msgspec.field(default_factory=ResponsesSettings)
    cache: CacheSettings = msgspec.field(default_factory=CacheSettings)
    telemetry: TelemetrySettings = msgspec.field(default_factory=TelemetrySettings)
    bounds: BoundsSettings = msgspec.field(default_factory=BoundsSettings)

    def provider_retry(self, provider: str) -> RetrySettings:
        return self.providers[provider].retry or self.retry


_NAMED_TABLES: dict[str, type[Struct]] = {
    "plans": PlanSettings,
    "providers": ProviderSettings,
    "routes": RouteSettings,
}


def config_path(cli_path: str | None, environ: Mapping[str, str]) -> Path | None:
    chosen = cli_path or environ.get("KLAWD_CONFIG")
    return Path(chosen) if chosen else None


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, merge over the built-ins, decode and check. Raises ConfigError with one clear line.
    Provider keys are resolved later, by name (gateway.state); only `store.url_env` is read here,
    because the store's kind decides what the rest of the checks allow."""
    raw: dict[str, Any] = {}
    where = str(path) if path else "built-in defaults"
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{where}: file not found") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: cannot read: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    merged = _merge_builtins(raw, where)
    _check_named_tables(merged, where)
    try:
        settings = msgspec.convert(merged, Settings, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {_readable(str(exc))}") from exc
    if settings.store.url_env and environ and environ.get(settings.store.url_env):
        store = msgspec.structs.replace(settings.store, url=environ[settings.store.url_env])
        settings = msgspec.structs.replace(settings, store=store)
    for name, provider in settings.providers.items():
        _check_cloud(name, provider, where)
    providers = {
        name: msgspec.structs.replace(provider, base_url=default_base_url(provider))
        for name, provider in settings.providers.items()
    }
    settings = msgspec.structs.replace(settings, providers=providers)
    _no_provider_deadline(providers, where)
    _check(settings, where)
    _check_proxies(settings, where, environ or {})
    return settings


def _no_provider_deadline(providers: dict[str, ProviderSettings], where: str) -> None:
    """`deadline_s` in a provider's own retry policy is refused: a request's deadline spans
    every provider it falls back to, so it is the request's, never a provider's."""
    for name, provider in providers.items():
        if provider.retry is not None and provider.retry.deadline_s is not None:
            raise ConfigError(
                f"{where}: `providers.{name}.retry.deadline_s`: a request's deadline spans "
                "every provider it falls back to; set it in `[retry]` only"
            )


def deadline_outlasted(settings: Settings) -> dict[str, float]:
    """The providers whose own bound on an answer's headers (a stream's `first_byte_timeout_s`,
    a non-streamed answer's `answer_timeout_s` when set) is not below `[retry] deadline_s`, with
    the longer bound: the deadline cuts such a call first, and a cut never counts against its
    deployment's circuit, so a hung deployment of theirs stays in rotation (docs/decisions/0005,
    19zzt and 19zzza). Empty when no deadline is set."""
    deadline_s = settings.retry.deadline_s
    if deadline_s is None:
        return {}
    outlasted = {}
    for name, provider in settings.providers.items():
        bound = max(provider.headers_timeout_s(True), provider.headers_timeout_s(False))
        if bound >= deadline_s:
            outlasted[name] = bound
    return outlasted


def _readable(message: str) -> str:
    # msgspec says "... - at `$.server.port`"; operators think in TOML keys.
    return message.replace("`$.", "`").replace("`$`", "the top level")


def _check_named_tables(merged: dict[str, Any], where: str) -> None:
    """msgspec names a bad entry of a dict as `providers[...]`; check entries one by one so the
    message names `providers.NAME.field` instead."""
    for table, kind in _NAMED_TABLES.items():
        for name, entry in merged.get(table, {}).items():
            try:
                msgspec.convert(entry, kind, strict=True)
            except msgspec.ValidationError as exc:
                message = (
                    str(exc).replace("`$.", f"`{table}.{name}.").replace("`$`", f"`{table}.{name}`")
                )
                raise ConfigError(f"{where}: {message}") from exc


def _merge_builtins(raw: dict[str, Any], where: str) -> dict[str, Any]:
    merged = dict(raw)
    for table in ("plans", "providers", "routes"):
        builtin: dict[str, Any] = copy.deepcopy(BUILTIN[table])
        given = raw.get(table, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{where}: `{table}` must be a table")
        for name, entry in given.items():
            if isinstance(entry, dict) and isinstance(builtin.get(name), dict):
                builtin[name] = {**builtin[name], **entry}
            else:
                builtin[name] = entry
        merged[table] = builtin
    given_models = raw.get("models", [])
    if not isinstance(given_models, list):
        raise ConfigError(f"{where}: `models` must be an array of tables ([[models]])")
    models: dict[str, Any] = {m["id"]: copy.deepcopy(m) for m in BUILTIN["models"]}
    for index, entry in enumerate(given_models):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise ConfigError(f"{where}: `models[{index}]` needs a string `id`")
        base = dict(models.get(entry["id"], {}))
        # A file that gives a built-in model deployments replaces its one deployment (and back).
        if "deployments" in entry:
            base.pop("provider", None)
            base.pop("upstream_model", None)
        if "provider" in entry:
            base.pop("deployments", None)
        models[entry["id"]] = {**base, **entry}
    merged["models"] = list(models.values())
    return merged


def _check_proxies(settings: Settings, where: str, environ: Mapping[str, str]) -> None:
    """Proxy URLs from the file and the environment are usable; no credentials in the file."""
    for name, provider in settings.providers.items():
        if "@" in provider.proxy_url:
            raise ConfigError(
                f"{where}: `providers.{name}.proxy_url` must not hold credentials: put the whole "
                "URL in an environment variable and name it in `proxy_url_env`"
            )
        try:
            proxy_policy(provider.proxy_url, provider.proxy_url_env, environ)
        except ValueError as exc:
            raise ConfigError(f"{where}: `providers.{name}`: {exc}") from None


def _check(settings: Settings, where: str) -> None:
    scheme = settings.store.url.split("://", 1)[0]
    if scheme not in ("sqlite", "redis", "rediss", "redis+cluster", "rediss+cluster"):
        raise ConfigError(
            f"{where}: `store.url` must start with sqlite://, redis://, rediss:// "
            "or redis+cluster://"
        )
    if settings.server.workers > 1 and scheme == "sqlite":
        raise ConfigError(
            f"{where}: `server.workers` = {settings.server.workers} needs a shared store: "
            "set `store.url` to redis://… (the embedded SQLite store and in-process limiter "
            "are exact only within one process)"
        )
    if "free" not in settings.plans:
        raise ConfigError(
            f"{where}: `plans` must keep the `free` plan (new accounts default to it)"
        )
    ids: set[str] = set()
    for index, model in enumerate(settings.models):
        if "/" not in model.id:
            raise ConfigError(f"{where}: `models[{index}].id` must look like provider/model")
        _check_deployments(settings, index, model, where)
        ids.add(model.id)
    for model in settings.models:
        for fallback in model.fallbacks:
            if fallback not in ids:
                raise ConfigError(f"{where}: model {model.id!r} falls back to unknown {fallback!r}")
    for name, route in settings.routes.items():
        if name in ids:
            raise ConfigError(f"{where}: route {name!r} has the id of a model")
        for target in route.targets:
            if target not in ids:
                raise ConfigError(
                    f"{where}: `routes.{name}.targets` names unknown model {target!r}"
                )
    hooks = settings.webhooks
    if hooks.lease_ttl_s <= hooks.timeout_s + hooks.poll_interval_s:
        raise ConfigError(
            f"{where}: `webhooks.lease_ttl_s` must exceed `webhooks.timeout_s` + "
            "`webhooks.poll_interval_s` (the scheduler renews its lease once per tick)"
        )
    public = settings.mission_control.public_base_url
    if public and not public.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: `mission_control.public_base_url` must be an http(s) URL")
    endpoint = settings.telemetry.otlp_endpoint
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: `telemetry.otlp_endpoint` must be an http(s) URL")
    for name, provider in settings.providers.items():
        if provider.kind != "echo" and not provider.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}: `providers.{name}.base_url` must be an http(s) URL")


def _check_cloud(name: str, provider: ProviderSettings, where: str) -> None:
    for field in CLOUD_REQUIRED_FIELDS.get(provider.kind, ()):
        if not getattr(provider, field):
            raise ConfigError(
                f"{where}: `providers.{name}.{field}` is required for kind {provider.kind!r}"
            )


def default_base_url(provider: ProviderSettings) -> str:
    """`base_url` as given, else the cloud's regional endpoint (bedrock, vertex)."""
    template = CLOUD_BASE_URLS.get(provider.kind)
    if provider.base_url or template is None:
        return provider.base_url
    if provider.kind == "vertex" and provider.location == "global":
        return "https://aiplatform.googleapis.com"
    return template.format(region=provider.region, location=provider.location)


def _check_deployments(settings: Settings, index: int, model: ModelSettings, where: str) -> None:
    field = f"models[{index}]"
    if model.deployments and (model.provider or model.upstream_model):
        raise ConfigError(
            f"{where}: `{field}` ({model.id}) has both `provider`/`upstream_model` and "
            "`deployments`: use one or the other"
        )
    if not model.deployments:
        if not model.provider:
            raise ConfigError(f"{where}: `{field}.provider` is required (or `deployments`)")
        if model.provider not in settings.providers:
            raise ConfigError(
                f"{where}: `{field}.provider` = {model.provider!r} is not a configured provider"
            )
        return
    seen: set[str] = set()
    for number, deployment in enumerate(model.deployments):
        if deployment.provider not in settings.providers:
            raise ConfigError(
                f"{where}: `{field}.deployments[{number}].provider` = {deployment.provider!r} "
                "is not a configured provider"
            )
        if deployment.provider in seen:
            # (model, provider) names a deployment in metrics, /status and the request log
            raise ConfigError(
                f"{where}: `{field}.deployments[{number}].provider` = {deployment.provider!r} "
                "is named twice in one model (one deployment per provider)"
            )
        seen.add(deployment.provider)
