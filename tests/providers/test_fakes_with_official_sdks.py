"""Each fake upstream is proven against its provider's own official SDK before the gateway's
tests trust it: if the SDK cannot parse an answer, a stream or an error, the fake is wrong."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import httpx2
import openai
import pytest
import replicate
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from replicate.exceptions import ModelError, ReplicateError

from tests.fakes.anthropic_upstream import ANSWER, TOOL_INPUT, FakeAnthropic
from tests.fakes.gemini_upstream import ANSWER as GEMINI_ANSWER
from tests.fakes.gemini_upstream import TOOL_ARGS, FakeGemini
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.replicate_upstream import FakeReplicate
from tests.fakes.server import PNG_1X1

MESSAGES: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Say hello"}]


# -- Anthropic ---------------------------------------------------------------------------------


def claude(fake: FakeAnthropic) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant-test", base_url=fake.base_url, max_retries=0)


def test_anthropic_sdk_parses_the_fake_message(fake_anthropic: FakeAnthropic) -> None:
    message = claude(fake_anthropic).messages.create(
        model="claude-fake", max_tokens=100, messages=MESSAGES
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "".join(ANSWER)
    assert message.stop_reason == "end_turn"
    assert message.usage.cache_read_input_tokens == 20


def test_anthropic_sdk_accumulates_the_fake_stream(fake_anthropic: FakeAnthropic) -> None:
    with claude(fake_anthropic).messages.stream(
        model="claude-fake", max_tokens=100, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(ANSWER)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 7


def test_anthropic_sdk_reassembles_streamed_tool_input(fake_anthropic: FakeAnthropic) -> None:
    with claude(fake_anthropic).messages.stream(
        model="claude-tools", max_tokens=100, messages=MESSAGES
    ) as stream:
        final = stream.get_final_message()
    tool_use = [block for block in final.content if block.type == "tool_use"]
    assert tool_use[0].input == TOOL_INPUT
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("model", "error_class", "status"),
    [
        ("claude-overloaded", anthropic.InternalServerError, 529),
        ("claude-rate-limit", anthropic.RateLimitError, 429),
        ("claude-invalid", anthropic.BadRequestError, 400),
        ("claude-auth", anthropic.AuthenticationError, 401),
        ("claude-permission", anthropic.PermissionDeniedError, 403),
        ("claude-not-found", anthropic.NotFoundError, 404),
        ("claude-api-error", anthropic.InternalServerError, 500),
    ],
)
def test_anthropic_sdk_raises_its_error_class_for_the_fake_errors(
    fake_anthropic: FakeAnthropic, model: str, error_class: type[Exception], status: int
) -> None:
    with pytest.raises(error_class) as caught:
        claude(fake_anthropic).messages.create(model=model, max_tokens=100, messages=MESSAGES)
    assert isinstance(caught.value, anthropic.APIStatusError)
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "error"


def test_anthropic_sdk_raises_on_the_fake_mid_stream_error_event(
    fake_anthropic: FakeAnthropic,
) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        with claude(fake_anthropic).messages.stream(
            model="claude-error-event", max_tokens=100, messages=MESSAGES
        ) as stream:
            for _ in stream:
                pass
    assert "overloaded_error" in str(caught.value)


def test_anthropic_sdk_fails_on_the_fake_cut_stream(fake_anthropic: FakeAnthropic) -> None:
    # anthropic 2.17 wraps the transport's error in its APIConnectionError; older versions let it
    # through: either way what failed must be the cut chunked body
    cut = (httpx2.RemoteProtocolError, anthropic.APIConnectionError)
    with pytest.raises(cut, match="incomplete chunked read") as failure:
        with claude(fake_anthropic).messages.stream(
            model="claude-cut", max_tokens=100, messages=MESSAGES
        ) as stream:
            stream.get_final_message()
    error = failure.value
    cause = error if isinstance(error, httpx2.RemoteProtocolError) else error.__cause__
    assert isinstance(cause, httpx2.RemoteProtocolError)


def test_anthropic_fake_requires_max_tokens_like_the_real_api(
    fake_anthropic: FakeAnthropic,
) -> None:
    response = httpx.post(
        f"{fake_anthropic.base_url}/v1/messages",
        headers={"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"},
        json={"model": "claude-fake", "messages": MESSAGES},
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }


# -- Gemini -------------------------------------------------------------------------------------


GEMINI_CLIENTS: list[genai.Client] = []


def gemini(fake: FakeGemini) -> genai.Client:
    client = genai.Client(
        api_key="AIza-test",
        http_options=genai_types.HttpOptions(
            base_url=fake.base_url,
            api_version="v1beta",
            retry_options=genai_types.HttpRetryOptions(attempts=1),
        ),
    )
    GEMINI_CLIENTS.append(client)  # a client closes its connections when collected
    return client


@pytest.fixture(autouse=True)
def close_gemini_clients() -> Iterator[None]:
    yield
    while GEMINI_CLIENTS:
        GEMINI_CLIENTS.pop().close()


def test_gemini_sdk_parses_the_fake_response(fake_gemini: FakeGemini) -> None:
    response = gemini(fake_gemini).models.generate_content(model="gemini-fake", contents="Hi")
    assert response.text == "".join(GEMINI_ANSWER)
    assert response.usage_metadata is not None
    assert response.usage_metadata.prompt_token_count == 11
    assert fake_gemini.last_request("gemini-fake")["headers"]["x-goog-api-key"] == "AIza-test"


def test_gemini_sdk_reads_the_fake_crlf_stream(fake_gemini: FakeGemini) -> None:
    chunks = list(
        gemini(fake_gemini).models.generate_content_stream(model="gemini-fake", contents="Hi")
    )
    assert "".join(c.text or "" for c in chunks) == "".join(GEMINI_ANSWER)
    last = chunks[-1].candidates
    assert last is not None and last[0].finish_reason == genai_types.FinishReason.STOP
    assert fake_gemini.last_request("gemini-fake")["path"].endswith(
        "gemini-fake:streamGenerateContent?alt=sse"
    )


def test_gemini_sdk_parses_the_fake_function_call(fake_gemini: FakeGemini) -> None:
    response = gemini(fake_gemini).models.generate_content(model="gemini-tools", contents="Hi")
    assert response.function_calls is not None
    assert response.function_calls[0].name == "get_weather"
    assert response.function_calls[0].args == TOOL_ARGS


@pytest.mark.parametrize(
    ("model", "error_class", "status"),
    [
        ("gemini-exhausted", genai_errors.ClientError, "RESOURCE_EXHAUSTED"),
        ("gemini-invalid", genai_errors.ClientError, "INVALID_ARGUMENT"),
        ("gemini-bad-key", genai_errors.ClientError, "INVALID_ARGUMENT"),
        ("gemini-permission", genai_errors.ClientError, "PERMISSION_DENIED"),
        ("gemini-not-found", genai_errors.ClientError, "NOT_FOUND"),
        ("gemini-internal", genai_errors.ServerError, "INTERNAL"),
        ("gemini-unavailable", genai_errors.ServerError, "UNAVAILABLE"),
    ],
)
def test_gemini_sdk_raises_its_error_class_for_the_fake_errors(
    fake_gemini: FakeGemini, model: str, error_class: type[Exception], status: str
) -> None:
    with pytest.raises(error_class) as caught:
        gemini(fake_gemini).models.generate_content(model=model, contents="Hi")
    assert isinstance(caught.value, genai_errors.APIError)
    assert caught.value.status == status


def test_gemini_sdk_raises_on_the_fake_mid_stream_error(fake_gemini: FakeGemini) -> None:
    with pytest.raises(genai_errors.ServerError) as caught:
        for _ in gemini(fake_gemini).models.generate_content_stream(
            model="gemini-error-event", contents="Hi"
        ):
            pass
    assert caught.value.status == "UNAVAILABLE"


# -- Replicate ----------------------------------------------------------------------------------


@pytest.fixture
def replicate_client(
    fake_replicate: FakeReplicate, monkeypatch: pytest.MonkeyPatch
) -> Iterator[replicate.Client]:
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.01")
    client = replicate.Client(api_token="r8_test", base_url=fake_replicate.base_url)
    yield client
    client._client.close()


def test_replicate_sdk_runs_the_fake_prediction_with_prefer_wait(
    replicate_client: replicate.Client, fake_replicate: FakeReplicate
) -> None:
    output = replicate_client.run(
        "fake-owner/instant", input={"prompt": "a cat", "num_outputs": 2}, use_file_output=False
    )
    assert isinstance(output, list) and len(output) == 2
    assert all(url.startswith(fake_replicate.base_url) for url in output)
    created = fake_replicate.creations("instant")[-1]
    assert created["headers"]["Prefer"] == "wait"


def test_replicate_sdk_reads_the_fakes_inline_images(
    replicate_client: replicate.Client,
) -> None:
    output = replicate_client.run("fake-owner/inline", input={"prompt": "a cat", "num_outputs": 2})
    assert isinstance(output, list) and len(output) == 2
    assert all(item.read() == PNG_1X1 for item in output)


def test_replicate_sdk_polls_the_fake_until_succeeded(
    replicate_client: replicate.Client, fake_replicate: FakeReplicate
) -> None:
    prediction = replicate_client.models.predictions.create(
        model="fake-owner/slow", input={"prompt": "a dog"}
    )
    assert prediction.status == "starting"
    prediction.wait()
    assert prediction.status == "succeeded"
    assert isinstance(prediction.output, list) and prediction.output[0].endswith(".png")


def test_replicate_sdk_raises_model_error_for_a_failed_fake_prediction(
    replicate_client: replicate.Client,
) -> None:
    with pytest.raises(ModelError) as caught:
        replicate_client.run("fake-owner/fails", input={"prompt": "x"})
    assert "CUDA out of memory" in str(caught.value)


def test_replicate_sdk_sees_a_canceled_fake_prediction(
    replicate_client: replicate.Client,
) -> None:
    prediction = replicate_client.models.predictions.create(
        model="fake-owner/canceled", input={"prompt": "x"}
    )
    prediction.wait()
    assert prediction.status == "canceled"


def test_replicate_sdk_retries_the_fakes_flaky_polls_after_their_retry_after(
    replicate_client: replicate.Client, fake_replicate: FakeReplicate
) -> None:
    """The fake's 503 and 429 on a poll are what the SDK's own transport retries (its
    RetryTransport: GETs on 429, 503 and 504), the 429 after its Retry-After (1 s); the third
    poll succeeds."""
    prediction = replicate_client.models.predictions.create(
        model="fake-owner/poll-flaky", input={"prompt": "x"}
    )
    assert prediction.status == "starting"
    prediction.wait()
    assert prediction.status == "succeeded"
    polls = [r for r in fake_replicate.requests if r["path"] == f"/v1/predictions/{prediction.id}"]
    assert len(polls) == 3
    assert polls[2]["at"] - polls[1]["at"] >= 0.99  # (time.sleep(1) between: never shorter)


def test_replicate_sdk_sees_the_fakes_broken_polls_as_transport_errors(
    replicate_client: replicate.Client,
) -> None:
    """The reset poll and the poll whose body breaks off fail in the SDK's HTTP client (which
    retries no transport error); the next poll succeeds."""
    prediction = replicate_client.models.predictions.create(
        model="fake-owner/poll-broken", input={"prompt": "x"}
    )
    for _ in range(2):
        with pytest.raises(httpx.TransportError):
            prediction.reload()
    prediction.reload()
    assert prediction.status == "succeeded"


def test_replicate_sdk_times_out_on_the_fakes_hung_poll(fake_replicate: FakeReplicate) -> None:
    """Two polls answer processing; the third is never answered: the SDK's read times out."""
    client = replicate.Client(
        api_token="r8_test", base_url=fake_replicate.base_url, timeout=httpx.Timeout(0.5)
    )
    try:
        prediction = client.models.predictions.create(
            model="fake-owner/poll-hangs", input={"prompt": "x"}
        )
        for _ in range(2):
            prediction.reload()
            assert prediction.status == "processing"
        with pytest.raises(httpx.ReadTimeout):
            prediction.reload()
    finally:
        client._client.close()


@pytest.mark.parametrize(("model", "status"), [("rate-limited", 429), ("invalid", 422)])
def test_replicate_sdk_parses_the_fake_problem_details(
    replicate_client: replicate.Client, model: str, status: int
) -> None:
    with pytest.raises(ReplicateError) as caught:
        replicate_client.run(f"fake-owner/{model}", input={"prompt": "x"})
    assert caught.value.status == status
    assert caught.value.detail


# -- OpenAI images ------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
def test_openai_sdk_parses_the_fake_images_answer(
    fake_openai: FakeOpenAI, response_format: str
) -> None:
    with openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0) as sdk:
        images = sdk.images.generate(
            model="img-fake",
            prompt="a lighthouse",
            n=2,
            response_format=response_format,  # type: ignore[arg-type]
        )
    assert images.data is not None and len(images.data) == 2
    if response_format == "url":
        assert (images.data[0].url or "").startswith("http://127.0.0.1:")
    else:
        assert images.data[0].b64_json and images.data[0].url is None


def test_replicate_sdk_runs_seedream_group_generation_on_the_fake(
    replicate_client: replicate.Client, fake_replicate: FakeReplicate
) -> None:
    output = replicate_client.run(
        "bytedance/seedream-4.5",
        input={"prompt": "a comic strip", "sequential_image_generation": "auto", "max_images": 4},
        use_file_output=False,
    )
    assert isinstance(output, list) and len(output) == 4
    fewer = replicate_client.run(
        "bytedance/seedream-4.5",
        input={"prompt": "[one image]", "sequential_image_generation": "auto", "max_images": 4},
        use_file_output=False,
    )
    assert isinstance(fewer, list) and len(fewer) == 1


def test_replicate_sdk_sees_the_fake_seedream_refuse_inputs_outside_its_schema(
    replicate_client: replicate.Client,
) -> None:
    with pytest.raises(ReplicateError) as caught:
        replicate_client.run(
            "bytedance/seedream-4.5", input={"prompt": "x", "num_outputs": 2, "max_images": 16}
        )
    assert caught.value.status == 422
    assert "num_outputs" in str(caught.value.detail) and "max_images" in str(caught.value.detail)


# -- OpenAI chat scenarios ----------------------------------------------------------------------


def test_openai_sdk_accumulates_the_fakes_interleaved_parallel_tool_calls(
    fake_openai: FakeOpenAI,
) -> None:
    with openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0) as sdk:
        with sdk.chat.completions.stream(
            model="parallel-fake", messages=[{"role": "user", "content": "weather and time"}]
        ) as stream:
            indices = [
                call.index
                for event in stream
                if event.type == "chunk"
                for choice in event.chunk.choices
                for call in choice.delta.tool_calls or []
            ]
            final = stream.get_final_completion()
        whole = sdk.chat.completions.create(
            model="parallel-fake", messages=[{"role": "user", "content": "x"}]
        )
    assert indices[2:6] == [0, 1, 0, 1], "the fragments interleave by index"
    calls = final.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        ("call_w", "get_weather", '{"city": "Paris"}'),
        ("call_t", "get_time", '{"zone": "Europe/Rome"}'),
    ]
    assert [c.function.arguments for c in whole.choices[0].message.tool_calls or []] == [  # type: ignore[union-attr]
        '{"city": "Paris"}',
        '{"zone": "Europe/Rome"}',
    ]


def test_openai_sdk_sees_the_fakes_vllm_style_stop_reason(fake_openai: FakeOpenAI) -> None:
    with openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0) as sdk:
        answer = sdk.chat.completions.create(
            model="stop-seq-fake", messages=[{"role": "user", "content": "count"}], stop=[", 4"]
        )
        chunks = list(
            sdk.chat.completions.create(
                model="stop-seq-fake",
                messages=[{"role": "user", "content": "count"}],
                stop=[", 4"],
                stream=True,
            )
        )
    choice = answer.choices[0]
    assert (choice.message.content, choice.finish_reason) == ("1, 2, 3", "stop")
    assert (choice.model_extra or {})["stop_reason"] == ", 4"
    finish = next(c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason)
    assert (finish.model_extra or {})["stop_reason"] == ", 4"


def test_openai_sdk_reads_the_fakes_cached_prompt_tokens(fake_openai: FakeOpenAI) -> None:
    with openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0) as sdk:
        answer = sdk.chat.completions.create(
            model="cached-fake", messages=[{"role": "user", "content": "x"}]
        )
        chunks = list(
            sdk.chat.completions.create(
                model="cached-fake",
                messages=[{"role": "user", "content": "x"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
    assert answer.usage.prompt_tokens_details.cached_tokens == 1920
    last = chunks[-1].usage
    assert last is not None and last.prompt_tokens_details is not None
    assert last.prompt_tokens_details.cached_tokens == 1920


def test_openai_sdk_sees_the_fake_rate_limit_reset_headers(fake_openai: FakeOpenAI) -> None:
    with openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0) as sdk:
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.chat.completions.create(
                model="ratelimit-reset", messages=[{"role": "user", "content": "hi"}]
            )
    headers = caught.value.response.headers
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "6m0s"
    assert "retry-after" not in headers
