"""The answer fuzz of test_fuzzed_answers.py on the cloud providers and on Replicate: Azure
OpenAI (the OpenAI shapes behind a deployment URL), Bedrock (Converse answers, and its binary
event stream with frames mutated, renamed, corrupted or cut), Vertex AI (the Gemini and
Anthropic shapes behind generateContent and rawPredict; its token from the Vertex fake) and
Replicate's predictions (created, polled, the images downloaded for b64_json). Every upstream
answer gets the client a clear answer: never a 500 or `internal_error`, errors in the envelope,
accepted streams ending whole; at the end no traceback and no failed ledger write in the log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes import bedrock_upstream
from tests.fakes.cloud_config import SECRETS, cloud_config, cloud_env
from tests.fakes.provider_config import PROVIDER_ENV, provider_config
from tests.fakes.vertex_upstream import FakeVertex
from tests.integration.test_fuzzed_answers import (
    MESSAGES,
    UNLIMITED,
    UPSTREAM_SECRETS,
    ScriptedUpstream,
    anthropic_answer,
    anthropic_events,
    assert_clear,
    each_model_serves,
    encode,
    gemini_answer,
    gemini_events,
    log_is_clean,
    mutated,
    openai_answer,
    openai_events,
    pieces_of,
    repeated_or_dropped,
)
from tests.live_bound import call_within

Script = tuple[int, str, list[bytes]]
# A request's bound, in this process's running time (tests/live_bound.py): a hang's guard that
# a machine stopped for a benchmark does not trip (each answer here takes milliseconds, a
# Replicate poll up to its model's 1.5 s).
BOUND_S = 30
ROUTES = ["/v1/chat/completions", "/v1/messages", "/v1/responses"]
EVENT_STREAM = "application/vnd.amazon.eventstream"
# model id -> the wire its upstream speaks (tests/fakes/cloud_config.py's models)
CLOUD_MODELS = {
    "azure/gpt-4o": "openai",
    "bedrock/claude": "bedrock",
    "vertex/gemini": "gemini",
    "vertex/claude": "anthropic",
}
SHAPES = {
    "openai": (openai_answer, openai_events),
    "gemini": (gemini_answer, gemini_events),
    "anthropic": (anthropic_answer, anthropic_events),
}


def bedrock_answer() -> dict[str, Any]:
    """The fake's Converse answer, a copy of its own (its usage is the module's dict)."""
    answer: dict[str, Any] = orjson.loads(orjson.dumps(bedrock_upstream.converse("claude")))
    return answer


def bedrock_events() -> list[tuple[str, dict[str, Any]]]:
    """The Converse stream's events (name, data), as tests/fakes/bedrock_upstream.py sends them."""
    usage = dict(bedrock_upstream.USAGE)
    return [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "lo"}}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("messageStop", {"stopReason": "end_turn"}),
        ("metadata", {"usage": usage, "metrics": {"latencyMs": 321}}),
    ]


def frame(message_type: str, name: str, payload: Any) -> bytes:
    kind = ":exception-type" if message_type == "exception" else ":event-type"
    headers = {kind: name, ":content-type": "application/json", ":message-type": message_type}
    return bedrock_upstream.encode(headers, encode(payload))


@st.composite
def bedrock_stream(draw: st.DrawFn) -> bytes:
    frames = []
    for name, data in bedrock_events():
        if draw(st.integers(0, 9)) == 0:
            name = draw(st.text(max_size=12))
        frames.append(frame("event", name, draw(mutated(data))))
    frames = repeated_or_dropped(draw, frames)
    if draw(st.integers(0, 4)) == 0:  # an exception in the stream
        name = draw(st.sampled_from(["throttlingException", "validationException", "x"]))
        message = draw(mutated({"message": draw(MESSAGES)}))
        frames.insert(draw(st.integers(0, len(frames))), frame("exception", name, message))
    body = bytearray(b"".join(frames))
    if body and draw(st.integers(0, 4)) == 0:  # a byte flipped: a CRC or a length wrong
        at = draw(st.integers(0, len(body) - 1))
        body[at] ^= draw(st.integers(1, 255))
    return bytes(body)


@st.composite
def cloud_scripts(draw: st.DrawFn) -> tuple[str, bool, Script]:
    model = draw(st.sampled_from(sorted(CLOUD_MODELS)))
    wire = CLOUD_MODELS[model]
    stream = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:  # an error status with some body
        # (no 429: its model would rest a second, and the examples in it never reach the
        # upstream; the 429's mapping is tested with each provider)
        status = draw(st.sampled_from([400, 401, 403, 404, 500, 503, 529]))
        said = draw(MESSAGES)
        error = {"message": said} if wire == "bedrock" else {"error": {"message": said}}
        return model, stream, (status, "application/json", [encode(draw(mutated(error)))])
    if wire == "bedrock":
        if stream:
            return model, stream, (200, EVENT_STREAM, pieces_of(draw, draw(bedrock_stream())))
        answer = encode(draw(mutated(bedrock_answer())))
        return model, stream, (200, "application/json", pieces_of(draw, answer))
    answer_of, events_of = SHAPES[wire]
    if not stream:
        answer = encode(draw(mutated(answer_of())))
        return model, stream, (200, "application/json", pieces_of(draw, answer))
    lines = []
    for event in events_of():
        event = draw(mutated(event))
        name = f"event: {event.get('type')}\n" if wire == "anthropic" else ""
        lines.append(name.encode() + b"data: " + encode(event) + b"\n\n")
    if wire == "openai" and draw(st.booleans()):
        lines.append(b"data: [DONE]\n\n")
    return model, stream, (200, "text/event-stream", pieces_of(draw, b"".join(lines)))


@pytest.fixture(scope="module")
def scripted(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ScriptedUpstream, Gateway]]:
    upstream = ScriptedUpstream()
    upstream.start()
    tokens = FakeVertex()  # Vertex's OAuth token exchange only: its answers are scripted
    tokens.start()
    url = f"http://127.0.0.1:{upstream.port}"
    directory = tmp_path_factory.mktemp("fuzzed-cloud-answers")
    port = free_port()
    config = directory / "klawd.toml"
    extra = (
        provider_config(url, url, url)
        + cloud_config(url, url, url)
        + "\n[routing]\ncooldown_s = 0.01\n"
    )
    gateway_config(config, port, f"{url}/v1", extra=extra)
    config.write_text(config.read_text().replace("attempts = 3", "attempts = 1", 1))
    config.write_text(config.read_text().replace("retry = { attempts = 2 }", "", 1))
    running = start_gateway(config, port, PROVIDER_ENV | cloud_env(tokens, directory))
    try:
        yield upstream, running
    finally:
        stop(running.process)
        upstream.stop()
        tokens.stop()
    log_is_clean(directory / "gateway.log", LEAKS)


LEAKS = [*UPSTREAM_SECRETS, *(secret.encode() for secret in SECRETS)]


@pytest.fixture(scope="module")
def client(scripted: tuple[ScriptedUpstream, Gateway]) -> Iterator[httpx.Client]:
    key = scripted[1].new_key(credits_usd=1000.0, limits=UNLIMITED)
    # No timeout of the client's own (a wall clock, tripped by a stopped machine): each request
    # is bounded by its running time instead (`call_within`).
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(headers=headers, timeout=None) as made:  # noqa: S113 (see above)
        yield made


def plain_cloud_answers() -> dict[str, bytes]:
    return {
        model: encode(bedrock_answer() if wire == "bedrock" else SHAPES[wire][0]())
        for model, wire in CLOUD_MODELS.items()
    }


def test_the_scripts_really_reach_each_cloud(scripted: tuple[ScriptedUpstream, Gateway]) -> None:
    """The fuzz is only worth something if its scripts are what the gateway reads: an unmutated
    answer of each wire is served (a wrong path or a missing token would fail here)."""
    each_model_serves(*scripted, plain_cloud_answers(), "/v1/chat/completions")


FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@FUZZ
@given(cloud_scripts(), st.sampled_from(ROUTES))
def test_any_cloud_answer_gets_a_clear_answer(
    scripted: tuple[ScriptedUpstream, Gateway],
    client: httpx.Client,
    script: tuple[str, bool, Script],
    route: str,
) -> None:
    upstream, gateway = scripted
    model, stream, upstream.script = script
    body: dict[str, Any] = {"model": model, "stream": stream}
    if route == "/v1/responses":
        body |= {"input": "hi", "max_output_tokens": 16}
    else:
        body |= {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}

    def streamed() -> tuple[httpx.Response, bytes]:
        with client.stream("POST", f"{gateway.base_url}{route}", json=body) as response:
            return response, response.read()

    response, whole = call_within(streamed, BOUND_S)
    assert_clear(
        response, whole, stream, (route, script, response.status_code, whole[-600:]), LEAKS
    )


def prediction(origin: str, status: str) -> dict[str, Any]:
    api = f"{origin}/v1/predictions/p1"
    return {
        "id": "p1",
        "model": "fake-owner/never",
        "input": {"prompt": "x"},
        "output": [f"{origin}/files/p1/out-0.png"] if status == "succeeded" else None,
        "error": "it broke" if status == "failed" else None,
        "status": status,
        "urls": {"get": api, "cancel": f"{api}/cancel"},
    }


@st.composite
def replicate_scripts(draw: st.DrawFn, origin: str) -> dict[str, Script]:
    """What the create call (POST), the poll (GET /v1/predictions/) and the image download
    (GET /files/) answer. The poll's status stays terminal or not a string: a non-terminal one
    polls until the model's 1.5 s deadline, which a few examples reach through the create."""
    first = draw(st.sampled_from(["succeeded", "succeeded", "starting", "failed", "canceled"]))
    created = encode(draw(mutated(prediction(origin, first))))
    polled_as = prediction(origin, draw(st.sampled_from(["succeeded", "failed", "canceled"])))
    polled = draw(mutated(polled_as))
    if not isinstance(polled.get("status"), str) or polled["status"] not in (
        "succeeded",
        "failed",
        "canceled",
    ):
        polled["status"] = draw(st.sampled_from([None, 1, ["succeeded"]]))
    image = draw(st.sampled_from([b"\x89PNG\r\n\x1a\nfake", b"", b"<html>"]))
    scripts = {
        # (no 429: it would rest the one image model for the examples after it)
        "POST": (draw(st.sampled_from([200, 201, 201, 201, 422, 500])), "application/json"),
        "/files/": (draw(st.sampled_from([200, 200, 404, 500])), "image/png"),
    }
    both = created + encode(polled)
    # Loopback only: no URL the gateway would fetch may name another host.
    assume(both.count(b"://") == both.count(origin.encode()))
    return {
        "POST": (scripts["POST"][0], "application/json", pieces_of(draw, created)),
        "/v1/predictions/": (200, "application/json", [encode(polled)]),
        "/files/": (scripts["/files/"][0], "image/png", [image] if image else []),
    }


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(st.data(), st.sampled_from(["url", "b64_json"]), st.integers(1, 3))
def test_any_replicate_prediction_gets_a_clear_answer(
    scripted: tuple[ScriptedUpstream, Gateway],
    client: httpx.Client,
    data: st.DataObject,
    response_format: str,
    n: int,
) -> None:
    upstream, gateway = scripted
    # Past the open circuit's rest (cooldown_s = 0.01): many examples fail on purpose, and
    # each should reach the upstream, as the half-open circuit's probe.
    time.sleep(0.02)
    scripts = data.draw(replicate_scripts(f"http://127.0.0.1:{upstream.port}"))
    upstream.script = scripts.pop("POST")
    upstream.get_scripts = scripts
    body = {
        "model": "replicate-deadline/never",
        "prompt": "a cat",
        "n": n,
        "response_format": response_format,
    }
    response = call_within(
        lambda: client.post(f"{gateway.base_url}/v1/images/generations", json=body), BOUND_S
    )
    said = (scripts, upstream.script, response.status_code, response.text[:600])
    assert_clear(response, response.content, False, said, LEAKS)
    if response.status_code == 200:
        images = response.json()["data"]
        assert 1 <= len(images) <= n, said
        assert all(set(image) <= {"url", "b64_json", "revised_prompt"} for image in images), said


def test_each_model_still_serves_after_the_fuzz(
    scripted: tuple[ScriptedUpstream, Gateway],
) -> None:
    upstream, gateway = scripted
    each_model_serves(upstream, gateway, plain_cloud_answers(), "/v1/chat/completions")
    origin = f"http://127.0.0.1:{upstream.port}"
    upstream.get_scripts = {"/files/": (200, "image/png", [b"\x89PNG\r\n\x1a\nfake"])}
    created = {"replicate-deadline/never": encode(prediction(origin, "succeeded"))}
    each_model_serves(upstream, gateway, created, "/v1/images/generations")


def test_an_image_upstream_answering_more_than_n_images_bills_n(
    scripted: tuple[ScriptedUpstream, Gateway],
) -> None:
    """An OpenAI-compatible image upstream answering three images for n = 2: the client gets
    two and pays for two, as reserved (before: three, billed past the reservation)."""
    upstream, gateway = scripted
    three = [{"b64_json": "iVBORw0KGgo=", "revised_prompt": f"cat {i}"} for i in range(3)]
    upstream.script = (200, "application/json", [encode({"created": 1, "data": three})])
    key = gateway.new_key(credits_usd=10.0, limits=UNLIMITED)
    served = httpx.post(
        f"{gateway.base_url}/v1/images/generations",
        json={"model": "openai/img-fake", "prompt": "a cat", "n": 2},
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert served.status_code == 200, served.text
    assert [image["revised_prompt"] for image in served.json()["data"]] == ["cat 0", "cat 1"]
    assert served.headers["x-klawd-cost-usd"] == "0.080000"  # 2 images x $0.04
